#!/usr/bin/python3
"""Prints the accessibility tree of the running guilocker dialog, one node a line.

Used by tests/dialog_gui.rs to read what a screen reader would: roles, names, states.
Entry contents are never printed, so no secret reaches the test log.
Usage: atspi_dump.py PID
"""
import sys

import gi

gi.require_version("Atspi", "2.0")
from gi.repository import Atspi  # noqa: E402

STATES = {
    Atspi.StateType.SENSITIVE: "sensitive",
    Atspi.StateType.SHOWING: "showing",
    Atspi.StateType.FOCUSED: "focused",
    Atspi.StateType.CHECKED: "checked",
    Atspi.StateType.PRESSED: "pressed",
}


def walk(node, depth, out):
    try:
        role = node.get_role_name()
        name = node.get_name() or ""
        description = node.get_description() or ""
        state_set = node.get_state_set()
        states = ",".join(v for k, v in STATES.items() if state_set.contains(k))
    except Exception:  # a node may vanish while we walk
        return
    out.append(f"{depth}\t{role}\t{name}\t{description}\t{states}")
    for i in range(node.get_child_count()):
        child = node.get_child_at_index(i)
        if child is not None:
            walk(child, depth + 1, out)


def main():
    pid = int(sys.argv[1])
    desktop = Atspi.get_desktop(0)
    out = []
    for i in range(desktop.get_child_count()):
        try:
            app = desktop.get_child_at_index(i)
            if app is None or app.get_process_id() != pid:
                continue
        except Exception:  # an application that just quit
            continue
        walk(app, 0, out)
    if not out:
        sys.exit("no accessible application with that pid")
    print("\n".join(out))


main()
