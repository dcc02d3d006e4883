#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small, hand-made or cut from the
WAL fixtures). Re-run after changing a target's input layout; the fuzzer adds its own finds
to a working copy, not here."""
import gzip, os, struct, sys

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)


def put(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def startup(params, minor=0):
    body = struct.pack(">I", 3 << 16 | minor)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack(">i", len(body) + 4) + body


put("startup", "ssl", struct.pack(">iI", 8, 80877103))
put("startup", "gssenc", struct.pack(">iI", 8, 80877104))
put("startup", "cancel", struct.pack(">iIi", 16, 80877102, 4242) + b"\x01\x02\x03\x04")
put("startup", "replication", startup([("user", "rep"), ("replication", "true"),
                                        ("application_name", "walreceiver")]))
put("startup", "ssl-then-startup", struct.pack(">iI", 8, 80877103) +
    startup([("user", "u"), ("database", "replication"), ("options", "-c x=y")], minor=2))


def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


status = b"r" + struct.pack(">QQQqB", 0x1000028, 0x1000028, 0, 1234567, 0)
hsf = b"h" + struct.pack(">qIIII", 1234567, 728, 0, 0, 0)
keepalive = b"k" + struct.pack(">Qqb", 0x1002000, 7, 1)
xlog = b"w" + struct.pack(">QQq", 0x1000000, 0x1002000, 7) + b"abc"
sasl = b"SCRAM-SHA-256\0" + struct.pack(">i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvY"
put("frontend", "copy", b"\xff" + msg(b"d", status) + msg(b"d", hsf) + msg(b"c", b""))
put("frontend", "server-copy", b"\xff" + msg(b"d", keepalive) + msg(b"d", xlog))
put("frontend", "query", b"\x10" + msg(b"Q", b"IDENTIFY_SYSTEM\0") + msg(b"X", b""))
put("frontend", "sasl", b"\x40" + msg(b"p", sasl) + msg(b"p", b"c=biws,r=x,p=AAAA"))
put("frontend", "copyfail", b"\x02" + msg(b"f", b"nope\0") + msg(b"S", b"") + msg(b"H", b""))

for i, c in enumerate([
    "IDENTIFY_SYSTEM", "SHOW wal_segment_size", 'SHOW "Server_Version";', "SHOW a.b",
    "TIMELINE_HISTORY 2", "READ_REPLICATION_SLOT s1",
    "CREATE_REPLICATION_SLOT s1 TEMPORARY PHYSICAL RESERVE_WAL",
    "CREATE_REPLICATION_SLOT \"S2\" PHYSICAL (RESERVE_WAL true)",
    "CREATE_REPLICATION_SLOT l LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE)",
    "DROP_REPLICATION_SLOT s1 WAIT",
    "START_REPLICATION SLOT s1 PHYSICAL 0/3000000 TIMELINE 1",
    "START_REPLICATION 16/B374D848", "START_REPLICATION SLOT l LOGICAL 0/0 (proto_version '1')",
    "BASE_BACKUP (LABEL 'x', PROGRESS)", "select 1", " ; ;", "UPLOAD_MANIFEST",
    "ALTER_REPLICATION_SLOT s (FAILOVER true)",
    # var_name: each component is truncated on its own, the whole may exceed 63 bytes (the
    # first long run's find: the target had quoted the whole name as one identifier).
    "READ_REPLICATION_SLOT " + " . ".join(["Abcdefghij" * 4] * 3),
]):
    put("command", f"c{i:02}", c.encode())

for i, c in enumerate([
    "host=primary port=5432 user=rep password=secret application_name=r1",
    "host=a,b port=5432,5433 user=rep target_session_attrs=read-write sslmode=verify-full "
    "sslrootcert=/etc/ca.pem connect_timeout=3",
    "postgresql://rep:pw@[::1]:5433,h2/db?sslmode=require&application_name=x%20y",
    "postgres://h/?keepalives=0&keepalives_idle=10&tcp_user_timeout=2500&channel_binding=require",
    "host='/var/run/postgresql' user='a b' options='-c wal_sender_timeout=0' hostaddr=127.0.0.1",
    "host=h user=u ssl_min_protocol_version=TLSv1.3 passfile=/p keepalives_count=3 dbname=''",
]):
    put("conninfo", f"c{i:02}", c.encode())

# wal: 6 header bytes (flags, start page, chunk, mutation xor, mutation offset LE), then
# raw WAL or 4-byte record specs (rmid, info, length LE).
wal_dir = os.path.join(repo, "relay", "testdata", "wal", "pg15-1mb")
seg8 = gzip.open(os.path.join(wal_dir, "000000010000000000000008.gz")).read()
put("wal", "raw-page0", bytes([0, 0, 5, 0, 0, 0]) + seg8[:3000])
put("wal", "raw-page5", bytes([4, 5, 40, 0, 0, 0]) + seg8[5 * 8192:5 * 8192 + 2500])
put("wal", "raw-zeros", bytes([2, 9, 1, 0, 0, 0]) + seg8[9 * 8192:9 * 8192 + 700] + bytes(300))
spec = lambda rmid, info, ln: struct.pack("<BBH", rmid, info, ln)
put("wal", "synth-small", bytes([1 | 8 | 0x20, 3, 9, 0, 0, 0]) +
    spec(10, 0x10, 40) + spec(1, 0, 0) + spec(21, 0x80, 200))
put("wal", "synth-cross-page", bytes([1 | 4, 0, 200, 0, 0, 0]) + spec(9, 0, 9000) +
    spec(3, 0, 100))
put("wal", "synth-cross-segment", bytes([1, 127, 30, 0, 0, 0]) + spec(11, 0, 7000) +
    spec(2, 0, 19000) + spec(4, 0, 10))
put("wal", "synth-switch", bytes([1 | 2, 127, 3, 0, 0, 0]) + spec(5, 0, 30) +
    spec(0, 0x40, 0) + spec(6, 0, 50))
put("wal", "synth-damaged", bytes([1, 0, 3, 0x10, 7, 0]) + spec(5, 0, 30) + spec(6, 0, 50))

# hba / users / scram: a few valid files.
put("hba", "h0", b"# TYPE DATABASE USER ADDRESS METHOD\n"
    b"hostssl replication rep 10.0.0.0/8 scram-sha-256\n"
    b"host replication all ::1/128 trust\nhostnossl all all 0.0.0.0/0 reject\n"
    b"host replication \"a b\",+grp samehost md5\n")
put("users", "u0", b"\"rep\" \"SCRAM-SHA-256$4096:f2VAmwAQwsmsN97hhfVeXw==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=\"\n\"x\" \"pw\"\n")
put("scram", "s0", b"SCRAM-SHA-256\0" + struct.pack(">i", 32) +
    b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvY\xffc=biws,r=rOprNGfwEbeRWgbNEkqO%hvY,p=AAAA")
put("scram", "s1", b"SCRAM-SHA-256-PLUS\0" + struct.pack(">i", 40) +
    b"p=tls-server-end-point,,n=,r=abcdefghijk\xffc=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsBwcH,r=x,p=QQ==")
# Fuzz builds fix the server nonce at base64 of 18 zero bytes (access/scram.rs), so a
# client-final message can carry the right nonce.
nonce = b"rOprNGfwEbeRWgbNEkqO%hvY" + b"A" * 24
put("scram", "s2", b"SCRAM-SHA-256\0" + struct.pack(">i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvY" +
    b"\xffc=biws,r=" + nonce + b",p=" + b"A" * 43 + b"=")
