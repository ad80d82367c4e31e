"""`quantport validate`'s quality limits: a limit that is not finite, or that the metric can
never meet, is a usage error (exit 2) before anything is loaded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("option,value", [
    ("--min-cosine", "nan"), ("--min-cosine", "-0.5"), ("--min-cosine", "1.5"),
    ("--max-ppl-ratio", "inf"), ("--max-ppl-ratio", "0"), ("--max-ppl-ratio", "-1"),
    ("--max-ppl-ratio", "nan"),
    ("--max-kld", "-1"), ("--max-kld", "inf"), ("--max-kld", "nan"),
    ("--min-top1", "5"), ("--min-top1", "-0.1"), ("--min-top1", "nan"),
])
def test_impossible_limit_is_a_usage_error(tmp_path, option, value):
    res = run("validate", tmp_path / "nope", option, value, "--json")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    error = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1 and option in error[0], res.output
    assert "NaN" not in res.stdout and "Infinity" not in res.stdout


@pytest.mark.parametrize("option,value", [
    ("--min-cosine", "0"), ("--min-cosine", "1"), ("--max-ppl-ratio", "1.2"),
    ("--max-kld", "0"), ("--min-top1", "1"),
])
def test_limit_at_the_edge_of_its_range_is_accepted(tmp_path, option, value):
    # past the options: the missing artifact is what is reported
    res = run("validate", tmp_path / "nope", option, value)
    assert res.exit_code == 1 and "not found" in res.output, res.output
