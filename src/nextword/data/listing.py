"""Listing a source's files without leaving it: the one walk that text folders, code repositories and the clean
step's web folders all use.

A link found while listing is followed only when its target lies inside the source's root. One that points
elsewhere (to ~/.ssh/id_rsa, say) would read a file that is no part of the data into the corpus, so it is set
apart, and the readers count it as a skip with its target. The root itself may be a link: the folder the user
named is where the data is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nextword.data.documents import SkipLog

LINK_LEAVES_ROOT = "link leaves the source folder"


@dataclass
class Listing:
    """The files found under a root, and the links that were not followed because they lead out of it."""

    files: list[Path] = field(default_factory=list)  # in the order of their paths relative to the root
    links_outside: list[Path] = field(default_factory=list)


def count_links_outside(links: Iterable[Path], skips: SkipLog, reason: str = LINK_LEAVES_ROOT) -> None:
    """Each link left out, counted as a skip with where it leads."""
    for link in links:
        skips.skip(link, f"{reason} (to {link.resolve()})")


def leads_outside(real_root: Path, path: Path) -> bool:
    """Whether `path`, a path under the root, lands outside it once every link on the way is followed;
    `real_root` is the root with its own links resolved."""
    return not path.resolve().is_relative_to(real_root)


def walk_files(root: Path, keep_folder: Callable[[str], bool] = lambda name: True,
               keep_file: Callable[[str], bool] = lambda name: True) -> Listing:
    """The files under `root` whose names `keep_file` takes, in folders whose names `keep_folder` takes.

    A link to a folder is not walked: one inside the root is walked where it really is, one outside is set apart.
    A link to a file is listed when it lands inside the root (or nowhere inside it: the reader counts it as
    unreadable) and set apart when it lands outside. Pipes, sockets and devices are not files of data.
    """
    listing, real_root = Listing(), root.resolve()
    for folder, folder_names, file_names in os.walk(root):  # os.walk does not descend into linked folders
        walked = []
        for name in folder_names:
            path = Path(folder, name)
            if not keep_folder(name):
                continue
            if not path.is_symlink():
                walked.append(name)
            elif leads_outside(real_root, path):
                listing.links_outside.append(path)
        folder_names[:] = walked
        for name in filter(keep_file, file_names):
            path = Path(folder, name)
            if not path.is_symlink() and not path.is_file():
                continue  # a pipe, socket or device: not a file of data, and reading a pipe would wait forever
            # Only a link can lead outside: the folders on the way are real ones, the walk does not enter links.
            outside = path.is_symlink() and leads_outside(real_root, path)
            (listing.links_outside if outside else listing.files).append(path)
    return _sorted(listing, root)


def check_listed(root: Path, relative_names: Iterable[str]) -> Listing:
    """The files another tool listed (git, by relative path), with those that lead outside the root through a
    link (the file itself, or a folder on its way) set apart."""
    listing, real_root = Listing(), root.resolve()
    for name in relative_names:
        path = root / name
        # Any folder on the way may be a link: git lists what its index holds, not what the checkout now is.
        (listing.links_outside if leads_outside(real_root, path) else listing.files).append(path)
    return _sorted(listing, root)


def _sorted(listing: Listing, root: Path) -> Listing:
    def relative(path: Path) -> str:
        return path.relative_to(root).as_posix()

    return Listing(sorted(listing.files, key=relative), sorted(listing.links_outside, key=relative))
