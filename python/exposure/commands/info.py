"""``exposure info``: what an index holds (size, tokenizer, schedule, sources, how it was built)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from exposure.cli import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("info", help="what an index holds", description="Describe an exposure index.")
    p.add_argument("index", help="index directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _human(n: float | None, unit: str = "B") -> str:
    if n is None:
        return "?"
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or prefix == "T":
            return f"{n:,.1f} {prefix}{unit}" if prefix else f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n} {unit}"


def format_info(d: dict[str, Any]) -> str:
    lines = [f"index        {d['path']}"]
    one = d["items"] == 1
    if d.get("item_length"):
        item = f"of {d['item_length']:,} tokens" if one else f"of {d['item_length']:,} tokens each"
    else:
        item = "" if one else "of varying length"
    lines.append(f"tokens       {d['tokens']:,} ({d['token_dtype']}), {d['items']:,} item{'' if one else 's'} {item}".rstrip())
    lines.append(f"vocabulary   {d['vocab_size']:,} ids (separator {d['vocab_size']})")
    lines.append(f"stream       {d.get('stream') or '(no identity recorded: an assembled or older index)'}")
    lines.append(
        f"on disk      {_human(d.get('bytes_on_disk'))} in {d['shards']} shard(s), "
        f"{d.get('bytes_per_token') or '?'} bytes/token"
    )
    if d.get("built"):
        rate = d.get("build_tokens_per_second")
        lines.append(f"built        {d['built']} in {d.get('build_seconds')} s" + (f" ({rate:,.0f} tokens/s)" if rate else ""))
    lines.append(f"format       {d.get('format') or '(not recorded)'}")
    tok = d.get("tokenizer")
    lines.append(f"tokenizer    {tok['name']} sha256 {tok['sha256']}" if tok else "tokenizer    (none recorded)")
    s = d.get("schedule")
    if s:
        from exposure.schedule import Schedule

        lines.append(f"schedule     {Schedule.from_dict(s).describe()}")
    else:
        lines.append("schedule     (none)")
    if d.get("window_structures"):
        lines.append(f"windows      {', '.join(d['window_structures'])}")
    b = d.get("build") or {}
    extras = {k: v for k, v in b.items() if v is not None and k not in ("format",)}
    if extras:
        lines.append("options      " + ", ".join(f"{k}={v}" for k, v in extras.items()))
    r = d.get("reader") or {}
    if r:
        shown = {k: v for k, v in r.items() if not isinstance(v, list)}
        lines.append("reader       " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    srcs = d.get("sources") or []
    lines.append(f"sources      {len(srcs)} file(s), {_human(sum(x['bytes'] for x in srcs))}")
    for x in srcs[:20]:
        lines.append(f"  {x['path']}  {x['bytes']:,} bytes  sha256 {x['sha256'] or '(not hashed)'}")
    if len(srcs) > 20:
        lines.append(f"  … {len(srcs) - 20} more")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from exposure.engine import Index, IndexFileError
    from exposure.ingest import describe_index

    try:
        index = Index(args.index)
    except IndexFileError as exc:
        raise UserError(str(exc)) from None
    d = describe_index(index)
    print(json.dumps(d, indent=1) if args.json else format_info(d))
    return 0
