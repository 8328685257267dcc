"""An independent next hop for the tests: aiosmtpd (PyPI) on 127.0.0.1.

usage: aiosmtpd_sink.py OUTDIR [REFUSED_RCPT...]
Prints the port on stdout, stores each message taken with 250 as
OUTDIR/NNNNNN.eml (the data as received, dot-unstuffed) with
OUTDIR/NNNNNN.json ({"from": ..., "rcpts": [...]}) written first, and
stops when stdin closes.
"""
import json
import os
import socket
import sys

from aiosmtpd.controller import Controller

OUT = sys.argv[1]
REFUSED = set(sys.argv[2:])


class Handler:
    count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in REFUSED:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        base = os.path.join(OUT, "%06d" % Handler.count)
        with open(base + ".json", "w") as f:
            json.dump({"from": envelope.mail_from, "rcpts": envelope.rcpt_tos}, f)
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".tmp", base + ".eml")
        return "250 2.0.0 OK stored by aiosmtpd"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


port = free_port()
controller = Controller(Handler(), hostname="127.0.0.1", port=port, decode_data=False)
controller.start()
print(port, flush=True)
sys.stdin.read()
controller.stop()
