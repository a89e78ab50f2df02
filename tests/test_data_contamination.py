"""data/contamination.py: GPT-3's 13-gram overlap test, on texts written here."""

from data import contamination


def test_contamination_finds_13_gram_overlaps_only():
    question = "Which planet in our solar system has the largest number of known moons orbiting it today?"
    items = {"q1": question,
             "q2": "What is the boiling point of water at sea level measured in degrees Celsius by a thermometer?",
             "short": "What is two plus two?"}
    train = ["A page that quotes it: WHICH planet in our solar-system has the largest number of known moons, "
             "orbiting it today? Saturn, says the page.",
             # every 10th word changed: no 13 consecutive words survive
             "What is the boiling point of water at sea level, in degrees of Celsius, by a thermometer?"]
    r = contamination.contamination(train, items)
    assert r["ids"] == ["q1"] and r["contaminated"] == 1
    assert r["checked"] == 2 and r["too_short"] == 1 and r["fraction"] == 0.5
    assert contamination.contamination([], items)["contaminated"] == 0
