from engine.errors import plural


def test_counts_agree_with_their_nouns():
    assert plural(1, "user") == "1 user"
    assert plural(0, "user") == "0 users"
    assert plural(2, "entity") == "2 entities"
    assert plural(12000, "window") == "12,000 windows"
    assert plural(1.0, "cell") == "1 cell"
    assert plural(2.5, "hour") == "2.5 hours"
    assert plural(3, "person", "people") == "3 people"
