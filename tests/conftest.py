"""Suite-wide rules.

Under ``CI=true`` a test that skips (a missing tool, package or binary) fails instead: CI is
where a missing install step must show, and a skip there would hide it.

Hypothesis runs without its per-example deadline: the machines are shared and noisy, and no
test asserts a timing (benchmarks in bench/ measure time).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("suite", deadline=None, print_blob=True)
settings.load_profile("suite")

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must not happen: {reason}"
