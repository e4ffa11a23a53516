"""Shared fixtures. Tests run under the ``smoke`` profile unless the caller set one."""

import os

os.environ.setdefault("GENLIB_PROFILE", "smoke")

import pytest  # noqa: E402

import genlib  # noqa: E402,F401  (quiet TensorFlow start-up before anything else imports it)


@pytest.fixture(scope="session")
def classifier():
    from genlib import metrics

    return metrics.domain_classifier(profile="smoke")
