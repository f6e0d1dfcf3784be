#!/usr/bin/env python3
"""Reference view of DBN files, from Databento's own parser (databento-dbn, policy AS_IS).

Usage: ref_dbn.py PATH...      (files, or directories searched recursively)
       ref_dbn.py --fragment VERSION PATH...   (record-only fragments of that DBN version)

Prints JSON lines. For each file one header line
  {"file": PATH, "status": "ok"|"error", "error": MSG, "version": V, "dataset": D,
   "schema": S, "records": N}
then one line per record with its class name (`type`), `rtype`, `ts_event`,
`instrument_id`, `symbol` (what the metadata's symbology or an earlier definition record
says, or null when neither does) and the schema's key fields, integers as DBN holds them
(prices at 1e-9, UNDEF sentinels as is). `.zst` files are decompressed across frames with
zstandard first. Used by ingest/tests/golden_dbn.rs; nothing here is tickmesh code.
"""
import datetime
import io
import json
import os
import sys

import databento_dbn as dbn
import zstandard


def chars(v):
    """Action/side/class fields are enums or one-character strings."""
    if v is None:
        return None
    if hasattr(v, "value"):
        v = v.value
    return v if isinstance(v, str) else chr(v) if isinstance(v, int) else str(v)


def num(v):
    return int(v.value) if hasattr(v, "value") else int(v)


def levels(rec, n, consolidated=False):
    out = []
    for i in range(n):
        suffix = "_%02d" % i
        lv = {
            "bid_px": getattr(rec, "bid_px" + suffix),
            "ask_px": getattr(rec, "ask_px" + suffix),
            "bid_sz": getattr(rec, "bid_sz" + suffix),
            "ask_sz": getattr(rec, "ask_sz" + suffix),
        }
        if consolidated:
            lv["bid_pb"] = getattr(rec, "bid_pb" + suffix)
            lv["ask_pb"] = getattr(rec, "ask_pb" + suffix)
        else:
            lv["bid_ct"] = getattr(rec, "bid_ct" + suffix)
            lv["ask_ct"] = getattr(rec, "ask_ct" + suffix)
        out.append(lv)
    return out


def fields(rec):
    name = type(rec).__name__
    d = {}
    if name == "MBOMsg":
        d.update(action=chars(rec.action), side=chars(rec.side), price=rec.price, size=rec.size,
                 order_id=rec.order_id, sequence=rec.sequence, flags=num(rec.flags))
    elif name == "TradeMsg":
        d.update(action=chars(rec.action), side=chars(rec.side), price=rec.price, size=rec.size,
                 sequence=rec.sequence)
    elif name in ("MBP1Msg", "MBP10Msg"):
        d.update(action=chars(rec.action), side=chars(rec.side), price=rec.price, size=rec.size,
                 depth=rec.depth, sequence=rec.sequence, flags=num(rec.flags),
                 levels=levels(rec, 1 if name == "MBP1Msg" else 10))
    elif name == "CMBP1Msg":
        d.update(action=chars(rec.action), side=chars(rec.side), price=rec.price, size=rec.size,
                 levels=levels(rec, 1, consolidated=True))
    elif name == "BBOMsg":
        d.update(side=chars(rec.side), price=rec.price, size=rec.size, sequence=rec.sequence,
                 levels=levels(rec, 1))
    elif name == "CBBOMsg":
        d.update(side=chars(rec.side), price=rec.price, size=rec.size,
                 levels=levels(rec, 1, consolidated=True))
    elif name == "OHLCVMsg":
        d.update(open=rec.open, high=rec.high, low=rec.low, close=rec.close, volume=rec.volume)
    elif name == "StatusMsg":
        d.update(action=num(rec.action), reason=num(rec.reason), trading_event=num(rec.trading_event),
                 is_trading=chars(rec.is_trading), is_quoting=chars(rec.is_quoting))
    elif name.startswith("InstrumentDefMsg"):
        d.update(raw_symbol=rec.raw_symbol, instrument_class=chars(rec.instrument_class),
                 currency=rec.currency, min_price_increment=rec.min_price_increment,
                 min_lot_size_round_lot=rec.min_lot_size_round_lot,
                 unit_of_measure_qty=rec.unit_of_measure_qty, expiration=rec.expiration,
                 strike_price=rec.strike_price, underlying=rec.underlying)
    elif name.startswith("StatMsg"):
        d.update(stat_type=num(rec.stat_type), price=rec.price, quantity=rec.quantity,
                 update_action=num(rec.update_action), sequence=rec.sequence)
    elif name == "ImbalanceMsg":
        d.update(side=chars(rec.side), ref_price=rec.ref_price,
                 cont_book_clr_price=rec.cont_book_clr_price,
                 auct_interest_clr_price=rec.auct_interest_clr_price, paired_qty=rec.paired_qty,
                 total_imbalance_qty=rec.total_imbalance_qty, auction_type=chars(rec.auction_type))
    return d


def read(path):
    raw = open(path, "rb").read()
    if path.endswith(".zst"):
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
        raw = reader.read()
    return raw


def symbology(meta):
    """instrument_id -> [(start_date, end_date, symbol)] from the metadata mappings."""
    out = {}
    if meta is None:
        return out
    id_out = str(meta.stype_out).lower().endswith("instrument_id")
    id_in = meta.stype_in is not None and str(meta.stype_in).lower().endswith("instrument_id")
    for raw_symbol, intervals in meta.mappings.items():
        for iv in intervals:
            if id_out:
                ident, sym = iv["symbol"], raw_symbol
            elif id_in:
                ident, sym = raw_symbol, iv["symbol"]
            else:
                continue
            try:
                out.setdefault(int(ident), []).append((iv["start_date"], iv["end_date"], sym))
            except ValueError:
                pass
    return out


def decode(path, fragment_version):
    data = read(path)
    if fragment_version is None:
        dec = dbn.DBNDecoder(upgrade_policy=dbn.VersionUpgradePolicy.AS_IS)
    else:
        dec = dbn.DBNDecoder(has_metadata=False, input_version=fragment_version,
                             upgrade_policy=dbn.VersionUpgradePolicy.AS_IS)
    dec.write(data)
    recs = dec.decode()
    meta = None
    if recs and type(recs[0]).__name__ == "Metadata":
        meta, recs = recs[0], recs[1:]
    return meta, recs


def main(argv):
    fragment = None
    if argv[:1] == ["--fragment"]:
        fragment, argv = int(argv[1]), argv[2:]
    paths = []
    for a in argv:
        if os.path.isdir(a):
            for root, _, files in os.walk(a):
                paths += [os.path.join(root, f) for f in files]
        else:
            paths.append(a)
    for path in sorted(paths):
        try:
            meta, recs = decode(path, fragment)
        except Exception as e:  # the reference's own refusal is part of the comparison
            print(json.dumps({"file": path, "status": "error", "error": str(e)}))
            continue
        head = {"file": path, "status": "ok", "records": len(recs)}
        if meta is not None:
            head.update(version=meta.version, dataset=meta.dataset, schema=str(meta.schema))
        print(json.dumps(head))
        syms = symbology(meta)
        defs = {}
        for i, r in enumerate(recs):
            name = type(r).__name__
            if name.startswith("InstrumentDefMsg") and r.raw_symbol:
                defs[r.instrument_id] = r.raw_symbol
            day = datetime.datetime.fromtimestamp(r.ts_event // 10**9, datetime.timezone.utc).date()
            sym = defs.get(r.instrument_id)
            if sym is None:
                for start, end, s in syms.get(r.instrument_id, []):
                    if start <= day < end:
                        sym = s
            line = {"file": path, "i": i, "type": name, "rtype": num(r.rtype), "ts_event": r.ts_event,
                    "instrument_id": r.instrument_id, "symbol": sym}
            line.update(fields(r))
            print(json.dumps(line))


if __name__ == "__main__":
    main(sys.argv[1:])
