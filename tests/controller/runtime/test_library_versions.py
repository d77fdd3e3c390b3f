"""``library_versions`` is asked once per process: the same answer as asked afresh, and a
new dict each call (a caller that adds to it changes no one else's)."""

from __future__ import annotations

from controller.runtime import historian_run
from controller.runtime.historian_run import LIBRARIES, library_versions


def test_remembered_versions_are_the_installed_ones_in_a_new_dict_each_call() -> None:
    first = library_versions()
    assert first == historian_run._installed(LIBRARIES)
    first["dask"] = "added by a caller"  # as the campaign manifest does
    again = library_versions()
    assert "dask" not in again and again == historian_run._installed(LIBRARIES)
    assert library_versions(["numpy", "no-such-library"]) == {
        "numpy": historian_run._installed(["numpy"])["numpy"],
        "no-such-library": "not installed",
    }
