"""runner.task_entry.descendants: the processes a task left behind, from the kernel's child lists."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from runner.task_entry import descendants

# a child that starts a grandchild (both sleep), then prints the grandchild's pid
TREE = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); print(p.pid, flush=True); time.sleep(30)"


def test_descendants_finds_children_and_grandchildren_as_psutil_does():
    child = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        found = descendants(os.getpid())
        assert {child.pid, grandchild} <= set(found)
        assert found.index(child.pid) < found.index(grandchild)  # children before theirs
        assert set(found) == {p.pid for p in psutil.Process().children(recursive=True)}
        assert descendants(grandchild) == []
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()


def test_descendants_of_a_process_that_is_gone_is_empty():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    time.sleep(0.05)
    assert descendants(proc.pid) == []
