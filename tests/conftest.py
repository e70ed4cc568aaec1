"""Suite-wide collection order: the files with the longest tests come first.

The suite runs in three processes on the 2-core machines (`-n 3 --dist loadfile`,
pytest.ini: a third process fills the cores while the others trace graphs or wait on
subprocesses; measured 18:43 against 22:23 for two, one run each on one machine), a file
to a process, and a process takes the next file in collection order when it is free. With
the long files first, the processes start on them at once and the short files fill in after
them, instead of one long file starting last and running alone at the end.

A long test carries `@pytest.mark.slow(seconds=S)`: S is a rough figure from
`pytest --durations=30` on a quiet 2-core machine, used only for this order (60 when not
given). Files are ordered by the sum of their slow tests' S, longest first; the order
within a file, and of the files with no slow test, is unchanged.
"""

DEFAULT_SECONDS = 60


def pytest_collection_modifyitems(session, config, items):
    weight = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            seconds = marker.kwargs.get("seconds", DEFAULT_SECONDS)
            weight[item.path] = weight.get(item.path, 0) + seconds
    items.sort(key=lambda item: -weight.get(item.path, 0))  # stable
