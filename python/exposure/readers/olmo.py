"""OLMo token files + ``global_indices.npy``, read in training order.

OLMo's data are headerless little-endian token arrays (``.npy`` by name only): uint16 for OLMo-1,
uint32 for OLMo-2. The files are taken in the order the training config lists them; a file of ``n``
tokens gives ``n // L`` instances of ``L`` tokens (the remainder is dropped), and instance ids count
across the files in that order. ``global_indices.npy`` (raw uint32, or a real ``.npy``) is the seeded
permutation of instance ids: batch ``b`` is ``global_indices[b*B:(b+1)*B]``.

This reader yields the instances in ``global_indices`` order, so stream offset order is training order:
instance ``global_indices[j]`` occupies stream offsets ``[j*L, (j+1)*L)``.

OLMo-2 masks the labels of instances made of a short pattern (period 1–13) repeated at least 32 times
(OLMo-core's ``InstanceFilterConfig(repetition_max_period=13, repetition_min_period=1,
repetition_max_count=32)``): they take a batch slot but teach nothing. With ``drop_repetitive`` such an
instance keeps its slot (offsets and steps are unchanged) but its tokens are replaced by a filler id
outside the vocabulary, so no phrase matches inside it and it adds nothing to exposure counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exposure.readers import Chunk, CorpusError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
NPY_MAGIC = b"\x93NUMPY"


def config_data_paths(config_path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """Token file paths listed by an OLMo training config, in OLMo's order, plus settings found there.

    YAML configs (``data.paths``, or ``data.datasets`` with labels in sorted order, as OLMo's
    ``build_memmap_dataset`` does) or a plain list file (one path per line, ``#`` comments).
    Settings: ``dtype`` (``data.memmap_dtype``), ``sequence_length`` (``model.max_sequence_length``),
    ``batch_size`` (``global_train_batch_size``), when present.
    """
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CorpusError(f"{path}: not valid YAML ({exc})") from None
        data = (cfg or {}).get("data") or {}
        if data.get("paths"):
            paths = [str(p) for p in data["paths"]]
        elif data.get("datasets"):
            paths = [str(p) for label in sorted(data["datasets"]) for p in data["datasets"][label]]
        else:
            raise CorpusError(f"{path}: the config lists no data.paths or data.datasets")
        settings: dict[str, Any] = {}
        if data.get("memmap_dtype"):
            settings["dtype"] = str(data["memmap_dtype"])
        model = cfg.get("model") or {}
        if model.get("max_sequence_length"):
            settings["sequence_length"] = int(model["max_sequence_length"])
        if cfg.get("global_train_batch_size"):
            settings["batch_size"] = int(cfg["global_train_batch_size"])
        return paths, settings
    paths = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            paths.append(line)
    if not paths:
        raise CorpusError(f"{path}: lists no token files")
    return paths, {}


def localize(path: str, data_root: str | Path | None, relative_to: Path | None = None) -> Path:
    """A config path as a local file: URLs (``s3://bucket/x``, ``https://host/x``) map to ``data_root/x``."""
    if _URL.match(path):
        if data_root is None:
            raise CorpusError(f"the config lists a remote path {path}; download the files and pass --data-root DIR")
        rest = _URL.sub("", path).split("/", 1)
        return Path(data_root) / (rest[1] if len(rest) > 1 else rest[0])
    p = Path(path)
    if not p.is_absolute():
        base = Path(data_root) if data_root is not None else relative_to
        if base is not None:
            p = base / p
    return p


def read_global_indices(path: str | Path) -> np.ndarray:
    """Memory-map a global-indices file: raw uint32, or a real ``.npy`` (1-D unsigned or signed ints)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head == NPY_MAGIC:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise CorpusError(f"{path}: expected a 1-D integer array, got {arr.dtype} {arr.shape}")
        return arr
    size = path.stat().st_size
    if size % 4:
        raise CorpusError(f"{path}: {size} bytes is not a whole number of uint32 indices")
    if size == 0:
        return np.zeros(0, dtype=np.uint32)
    return np.memmap(path, dtype="<u4", mode="r")


def check_permutation(indices: np.ndarray, n: int, path: Path | str, block: int = 1 << 24, progress: bool = False) -> None:
    """Raise :class:`CorpusError` unless ``indices`` is a permutation of ``0..n-1``."""
    if len(indices) != n:
        raise CorpusError(
            f"{path}: holds {len(indices)} indices but the token files give {n} instances; "
            f"it is not a permutation of the instances (wrong files, order or sequence length?)"
        )
    seen = np.zeros(n, dtype=bool)
    bar = tqdm(total=n, unit="inst", unit_scale=True, desc="check global indices", disable=not progress or n < block,
               dynamic_ncols=True)
    for lo in range(0, n, block):
        bar.update(min(block, n - lo))
        b = np.asarray(indices[lo : lo + block]).astype(np.int64)
        if b.size and (int(b.min()) < 0 or int(b.max()) >= n):
            j = int(np.argmax((b < 0) | (b >= n)))
            raise CorpusError(f"{path}: entry {lo + j} is {int(b[j])}, outside the {n} instances")
        if seen[b].any():
            j = int(np.argmax(seen[b]))
            raise CorpusError(f"{path}: instance {int(b[j])} appears more than once (again at entry {lo + j})")
        u = np.unique(b)
        if len(u) != len(b):
            vals, counts = np.unique(b, return_counts=True)
            raise CorpusError(f"{path}: instance {int(vals[np.argmax(counts > 1)])} appears more than once")
        seen[b] = True
    bar.close()
    if not seen.all():
        raise CorpusError(f"{path}: instance {int(np.argmin(seen))} never appears")


def repetitive_rows(x: np.ndarray, max_period: int = 13, min_period: int = 1, min_count: int = 32) -> np.ndarray:
    """bool[n]: rows of ``x`` (n × L) containing a pattern of period ``min_period..max_period`` repeated
    at least ``min_count`` times in a row (a span of ``min_count*p`` tokens with ``x[i] == x[i+p]``)."""
    n, L = x.shape
    out = np.zeros(n, dtype=bool)
    for p in range(min_period, min(max_period, L // 3) + 1):
        need = (min_count - 1) * p  # equalities x[i] == x[i+p] in a row
        if need <= 0 or need > L - p:
            continue
        eq = x[:, p:] == x[:, :-p]
        cs = np.zeros((n, eq.shape[1] + 1), dtype=np.int32)
        np.cumsum(eq, axis=1, out=cs[:, 1:])
        out |= (cs[:, need:] - cs[:, :-need] == need).any(axis=1)
    return out


class OlmoReader:
    """OLMo instances in ``global_indices`` (training) order."""

    def __init__(
        self,
        token_files: Sequence[str | Path],
        sequence_length: int,
        dtype: str | np.dtype[Any] = "uint16",
        global_indices: str | Path | None = None,
        drop_repetitive: bool = False,
        filler_id: int | None = None,
        progress: bool = False,
    ) -> None:
        self.token_files = [Path(p) for p in token_files]
        if not self.token_files:
            raise CorpusError("no OLMo token files given")
        self.L = int(sequence_length)
        if self.L <= 0:
            raise CorpusError(f"sequence length must be positive, got {self.L}")
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise CorpusError(f"OLMo token files are uint16 or uint32, not {dt}")
        self.source_dtype = dt.newbyteorder("<")
        self.dtype = np.uint16 if dt == np.dtype(np.uint16) else np.uint32
        counts = []
        for f in self.token_files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: OLMo token file not found")
            size = f.stat().st_size
            if size % dt.itemsize:
                raise CorpusError(f"{f}: {size} bytes is not a whole number of {dt} tokens (wrong --token-dtype?)")
            counts.append(size // dt.itemsize // self.L)
        self.instances_per_file = np.asarray(counts, dtype=np.int64)
        self.first_instance = np.concatenate([[0], np.cumsum(self.instances_per_file)]).astype(np.int64)
        self.total_instances = int(self.first_instance[-1])
        self.global_indices_path = None if global_indices is None else Path(global_indices)
        if self.global_indices_path is not None:
            self.order = read_global_indices(self.global_indices_path)
            check_permutation(self.order, self.total_instances, self.global_indices_path, progress=progress)
        else:
            self.order = None
        self.drop_repetitive = drop_repetitive
        if drop_repetitive:
            if filler_id is None:
                raise CorpusError("dropping repetitive instances needs a filler id (the vocabulary size)")
            if filler_id > np.iinfo(self.dtype).max:
                raise CorpusError(f"filler id {filler_id} does not fit {np.dtype(self.dtype)}")
        self.filler_id = filler_id
        self.masked_instances = 0
        self._maps: list[np.ndarray | None] = [None] * len(self.token_files)

    @property
    def num_items(self) -> int:
        return self.total_instances

    @property
    def num_tokens(self) -> int:
        return self.total_instances * self.L

    @property
    def item_length(self) -> int:
        return self.L

    @property
    def source_files(self) -> list[Path]:
        files = list(self.token_files)
        if self.global_indices_path is not None:
            files.append(self.global_indices_path)
        return files

    def describe(self) -> dict[str, Any]:
        return {
            "token_files": [str(p) for p in self.token_files],
            "token_dtype": str(np.dtype(self.dtype)),
            "sequence_length": self.L,
            "instances": self.total_instances,
            "instances_per_file": self.instances_per_file.tolist(),
            "global_indices": None if self.global_indices_path is None else str(self.global_indices_path),
            "order": "global_indices" if self.order is not None else "instance id (no global indices given)",
            "drop_repetitive": self.drop_repetitive,
            "filler_id": self.filler_id if self.drop_repetitive else None,
            "masked_instances": self.masked_instances if self.drop_repetitive else None,
        }

    def _rows(self, f: int) -> np.ndarray:
        m = self._maps[f]
        if m is None:
            n = int(self.instances_per_file[f])
            if n == 0:
                m = np.zeros((0, self.L), dtype=self.source_dtype)
            else:
                m = np.memmap(self.token_files[f], dtype=self.source_dtype, mode="r", shape=(n, self.L))
            self._maps[f] = m
        return m

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Instances ``ids`` (global instance ids) as an ``len(ids) × L`` array."""
        out = np.empty((len(ids), self.L), dtype=self.dtype)
        fidx = np.searchsorted(self.first_instance, ids, side="right") - 1
        for f in np.unique(fidx):
            sel = np.nonzero(fidx == f)[0]
            local = ids[sel] - self.first_instance[f]
            order = np.argsort(local, kind="stable")  # read each file front to back
            out[sel[order]] = self._rows(int(f))[local[order]]
        return out

    def chunks(self, max_tokens: int) -> Iterator[Chunk]:
        per = max(1, max_tokens // self.L)
        for lo in range(0, self.total_instances, per):
            hi = min(self.total_instances, lo + per)
            if self.order is not None:
                ids = np.asarray(self.order[lo:hi]).astype(np.int64)
            else:
                ids = np.arange(lo, hi, dtype=np.int64)
            block = self.gather(ids)
            if self.drop_repetitive:
                mask = repetitive_rows(block)
                if mask.any():
                    block[mask] = self.filler_id
                    self.masked_instances += int(mask.sum())
            yield Chunk(block.reshape(-1), item_length=self.L)


__all__ = [
    "OlmoReader",
    "check_permutation",
    "config_data_paths",
    "localize",
    "read_global_indices",
    "repetitive_rows",
]
