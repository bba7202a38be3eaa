"""A real SMTP server for the mail tests (aiosmtpd): STARTTLS required, then AUTH PLAIN or
LOGIN required with one user and password. Every message accepted is parsed with Python's
email package and written as JSON to OUT/NNN.json (through a rename: a file seen is whole);
every AUTH attempt is appended to OUT/auth.log as `LOGIN ok|refused`.

usage: smtpd.py PORT CERT KEY USER PASSWORD OUT
Prints `READY` once it accepts connections; stops when its standard input closes.
"""

import email
import email.policy
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port, cert, key, user, password, out = sys.argv[1:7]
    counter = {"n": 0}

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else "?"
        with open(os.path.join(out, "auth.log"), "a") as f:
            f.write(f"{mechanism} {login} {'ok' if ok else 'refused'}\n")
        # handled=False: aiosmtpd answers 535 itself on a refusal.
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            parts = []
            for p in msg.walk():
                if p.is_multipart():
                    continue
                parts.append({"content_type": p.get_content_type(), "text": p.get_content()})
            doc = {
                "login": session.auth_data,
                "tls": session.ssl is not None,
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "from": str(msg["From"]),
                "to": str(msg["To"]),
                "subject": str(msg["Subject"]),
                "content_type": msg.get_content_type(),
                "parts": parts,
            }
            counter["n"] += 1
            path = os.path.join(out, "%03d.json" % counter["n"])
            with open(path + ".tmp", "w") as f:
                json.dump(doc, f)
            os.rename(path + ".tmp", path)
            return "250 OK"

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=ctx,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
    )
    controller.start()
    print("READY", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
