"""Drives smtp-relay with Python's smtplib: a second, independent client.

Usage: smtplib_client.py MODE HOST PORT CAFILE USER PASSWORD SENDER RCPT
MODE is starttls (587/25), ssl (465) or plain (25, no AUTH).
Prints one JSON object with what the server said.
"""

import json
import smtplib
import ssl
import sys

mode, host, port, cafile, user, password, sender, rcpt = sys.argv[1:9]
port = int(port)
ctx = ssl.create_default_context(cafile=cafile)
out = {}
message = (
    b"From: " + sender.encode() + b"\r\n"
    b"To: " + rcpt.encode() + b"\r\n"
    b"Subject: from smtplib\r\n"
    b"\r\n"
    b".starts with a dot\r\n"
    b"8-bit \xc3\xa4\r\n"
)

if mode == "ssl":
    s = smtplib.SMTP_SSL(host, port, context=ctx, timeout=10)
    s.ehlo("python.example")
else:
    s = smtplib.SMTP(host, port, timeout=10)
    s.ehlo("python.example")
    out["auth_before_tls"] = s.has_extn("auth")
    out["starttls_offered"] = s.has_extn("starttls")
    if mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("python.example")
out["auth_offered"] = s.has_extn("auth")

if mode != "plain":
    try:
        s.login(user, password + "-wrong")
        out["wrong_password"] = "accepted"
    except smtplib.SMTPAuthenticationError as e:
        out["wrong_password"] = e.smtp_code
    s.login(user, password)
    out["login"] = "ok"

code, resp = s.mail(sender, ["BODY=8BITMIME"])
out["mail"] = code
code, resp = s.rcpt(rcpt)
out["rcpt"] = [code, resp.decode()]
if code == 250:
    code, resp = s.data(message)
    out["data"] = [code, resp.decode()]
code, resp = s.rcpt("victim@other.example")
out["rcpt_without_mail"] = code
s.quit()
print(json.dumps(out))
