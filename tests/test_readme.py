import os

from tuneforge.config.reference import markdown

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_config_reference_matches_the_code():
    """Regenerate with `python -m tuneforge.config.reference --update` after changing config/args.py."""
    text = open(README, encoding="utf-8").read()
    block = text.split("<!-- reference:start -->\n", 1)[1].split("<!-- reference:end -->", 1)[0]
    assert block == markdown()


def test_readme_starts_with_the_two_commands():
    head = open(README, encoding="utf-8").read()[:600]
    assert "make demo" in head and "make test" in head
