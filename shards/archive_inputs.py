"""ImageFolder trees and unlabeled pools that arrive as tar archives, read in place.

ImageNet-22K comes as one tar per class, ImageNet-1K's train set as a tar of class tars,
Places365 as one tar of class folders. Extracting them first doubles the disk and costs hours
at this size; the builder instead lists each archive's headers once and later reads every member
by its byte range (``item_bytes.TarMember``). An item's id is what it would be in the extracted
folder (``class/file.jpg``), so a source built from the archive and one built from its
extraction have the same ids and plan.

Only uncompressed tars can be read in place: a compressed one is refused with the command that
fixes it. Member names are data, used as ids only, never as paths."""
from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

from .images import INPUT_EXTS
from .item_bytes import InputError, TarMember

COMPRESSED_MAGIC = {b'\x1f\x8b': 'gzip', b'BZh': 'bzip2', b'\xfd7zXZ\x00': 'xz', b'\x28\xb5\x2f\xfd': 'zstd'}


TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tar.xz', '.tar.zst')


def is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def _stem(path: Path) -> str:
    return next(path.name[:-len(s)] for s in sorted(TAR_SUFFIXES, key=len, reverse=True) if path.name.lower().endswith(s))


def _check_uncompressed(path: Path) -> None:
    with open(path, 'rb') as f:
        head = f.read(6)
    for magic, kind in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise InputError(f'{path}: a {kind}-compressed archive cannot be read in place; decompress it once '
                        f'(e.g. `{"unzstd" if kind == "zstd" else {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz"}[kind]} '
                        f'{path.name}`), and the builder reads its members without extracting them')


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _members(tar: tarfile.TarFile, base: int, prefix: str) -> List[Tuple[str, TarMember]]:
    """Image members as (name, byte range); a member that is itself a tar is listed inside,
    its images named ``{its stem}/{name}`` (ImageNet-1K's tar of class tars)."""
    out = []
    for m in tar:
        if not m.isreg():
            continue
        if _ext(m.name) == '.tar':
            inner = tarfile.open(fileobj=tar.extractfile(m), mode='r:')
            stem = posixpath.splitext(posixpath.basename(m.name))[0]
            out += _members(inner, base + m.offset_data, f'{prefix}{stem}/')
        elif _ext(m.name) in INPUT_EXTS:
            name = prefix + (m.name[2:] if m.name.startswith('./') else m.name)
            out.append((name, TarMember(base + m.offset_data, m.size, name)))
    return out


def archive_images(path: Path) -> List[Tuple[str, TarMember]]:
    """Every image in an uncompressed tar (and in the tars it holds), sorted by name."""
    _check_uncompressed(path)
    try:
        with tarfile.open(path, mode='r:') as tar:
            return sorted(_members(tar, 0, ''), key=lambda nm: nm[0])
    except tarfile.TarError as exc:
        raise InputError(f'{path}: not a readable tar archive ({exc})') from None


def _common_folder(names: List[str]) -> str:
    folders = [posixpath.dirname(n).split('/') for n in names]
    common = folders[0]
    for f in folders[1:]:
        common = common[:next((i for i, (a, b) in enumerate(zip(common, f)) if a != b), min(len(common), len(f)))]
    return '/'.join(common)


ClassImages = Dict[str, List[Tuple[str, Path, TarMember]]]   # class -> (id, archive, byte range) of its images


def classes_in_archive(path: Path) -> ClassImages:
    """One tar holding a folder per class (below the folders every image shares), or a tar of class
    tars; ids are relative to the class folders' parent; a class's subfolders are part of it."""
    images = archive_images(path)
    if not images:
        raise InputError(f'{path}: no images in the archive')
    root = _common_folder([n for n, _ in images])
    classes: ClassImages = {}
    for name, member in images:
        rel = name[len(root):].lstrip('/') if root else name
        if '/' not in rel:
            raise InputError(f'{path}: {name} is not inside a class folder (an ImageFolder archive holds one folder, '
                             'or one tar, per class)')
        # the class is the first folder, whatever lies below it: as in the extracted ImageFolder tree
        classes.setdefault(rel.split('/', 1)[0], []).append((rel, path, member))
    return dict(sorted(classes.items()))


def classes_in_class_tars(tars: List[Path]) -> ClassImages:
    """``{class}.tar`` archives (ImageNet-22K's form): ids ``{class}/{member}``."""
    classes: ClassImages = {}
    for tar in sorted(tars):
        stem = _stem(tar)
        classes[stem] = [(f'{stem}/{name}', tar, member) for name, member in archive_images(tar)]
    return classes
