#!/usr/bin/env python3
"""Keeps docs/tour.md true to the code. A reference is a link [`path:a-b`](../path#La-Lb)
(or :a / #La for one line); when a code fence follows it on the next line, the fence must
hold exactly lines a..b of path as they are now. Exit status 1 names every reference that
no longer holds.

  check_tour.py docs/tour.md         check (CTest's tour_quotes)
  check_tour.py --fix docs/tour.md   after code moved: renumber each quote to where its
                                     lines now are (found verbatim, once); check the rest
"""
import pathlib
import re
import sys

REF = re.compile(r"\[`([\w./-]+):(\d+)(?:-(\d+))?`\]\(\.\./([\w./-]+)#L(\d+)(?:-L(\d+))?\)")


def link(path, a, b):
    span, anchor = (f"{a}", f"L{a}") if a == b else (f"{a}-{b}", f"L{a}-L{b}")
    return f"[`{path}:{span}`](../{path}#{anchor})"


def main(argv):
    fix = "--fix" in argv
    doc = pathlib.Path([a for a in argv if a != "--fix"][0])
    root = doc.resolve().parent.parent
    lines = doc.read_text().split("\n")
    problems, quotes, refs = [], 0, 0
    for i, line in enumerate(lines):
        for m in REF.finditer(line):
            refs += 1
            path, a, b = m.group(1), int(m.group(2)), int(m.group(3) or m.group(2))
            where = f"{doc}:{i + 1}: {path}:{a}-{b}"
            if (m.group(4), int(m.group(5)), int(m.group(6) or m.group(5))) != (path, a, b):
                problems.append(f"{where}: the link text and its target differ")
                continue
            f = root / path
            if not f.is_file():
                problems.append(f"{where}: no such file")
                continue
            src = f.read_text().split("\n")
            body = None
            if i + 1 < len(lines) and lines[i + 1].startswith("```"):
                j = i + 2
                while j < len(lines) and not lines[j].startswith("```"):
                    j += 1
                body = lines[i + 2:j]
                quotes += 1
            if fix and body:
                at = [k for k in range(len(src) - len(body) + 1) if src[k:k + len(body)] == body]
                if len(at) == 1 and (at[0] + 1, at[0] + len(body)) != (a, b):
                    a, b = at[0] + 1, at[0] + len(body)
                    lines[i] = line = line.replace(m.group(0), link(path, a, b))
            if not 1 <= a <= b <= len(src):
                problems.append(f"{where}: {path} has {len(src)} lines")
            elif body is not None and body != src[a - 1:b]:
                problems.append(f"{where}: the file no longer reads as quoted; it has\n" + "\n".join(src[a - 1:b]))
    if fix:
        doc.write_text("\n".join(lines))
    for p in problems:
        print(p)
    print(f"tour: {quotes} quotes and {refs - quotes} other references, {len(problems)} wrong")
    return 1 if problems or quotes == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
