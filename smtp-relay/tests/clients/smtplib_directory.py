"""Drives smtp-relay with Python's smtplib for the directory tests.

Usage: smtplib_directory.py HOST PORT CAFILE PLAN
PLAN is a JSON list of steps, run over one STARTTLS session (a "new" step starts another):
  ["login", USER, PASSWORD]  ["mail", ADDRESS]  ["rcpt", ADDRESS]  ["data"]  ["rset"]  ["new"]
Prints a JSON list with one [code, text] per step.
"""

import json
import smtplib
import ssl
import sys

host, port, cafile, plan = sys.argv[1:5]
port = int(port)
ctx = ssl.create_default_context(cafile=cafile)


def connect():
    s = smtplib.SMTP(host, port, timeout=20)
    s.ehlo("python.example")
    s.starttls(context=ctx)
    s.ehlo("python.example")
    return s


s = connect()
out = []
for step in json.loads(plan):
    op = step[0]
    try:
        if op == "login":
            code, resp = s.login(step[1], step[2])
        elif op == "mail":
            code, resp = s.mail(step[1])
        elif op == "rcpt":
            code, resp = s.rcpt(step[1])
        elif op == "data":
            code, resp = s.data(b"Subject: directory test\r\n\r\nhello\r\n")
        elif op == "rset":
            code, resp = s.rset()
        elif op == "new":
            try:
                s.quit()
            except smtplib.SMTPException:
                pass
            s = connect()
            code, resp = 220, b"new session"
        else:
            raise ValueError(op)
    except smtplib.SMTPResponseException as e:
        code, resp = e.smtp_code, e.smtp_error
    except smtplib.SMTPRecipientsRefused as e:
        code, resp = list(e.recipients.values())[0]
    except smtplib.SMTPServerDisconnected:
        code, resp = -1, b"disconnected"
    out.append([code, resp.decode(errors="replace")])
try:
    s.quit()
except smtplib.SMTPException:
    pass
print(json.dumps(out))
