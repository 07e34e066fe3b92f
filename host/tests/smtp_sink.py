"""A loopback SMTP sink for the notification tests (Debian's python3-aiosmtpd).

STARTTLS is required before MAIL and before AUTH, with the certificate and
key given; AUTH takes one user and password. Each message is written to
--dir as one file, headed by what the session was (TLS, authenticated),
renamed into place only once complete. Prints "ready" when it listens and
stops on SIGTERM.
"""

import argparse
import os
import signal
import ssl
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    args = ap.parse_args()

    class Sink:
        count = 0

        async def handle_DATA(self, server, session, envelope):
            Sink.count += 1
            name = os.path.join(args.dir, f"{time.time_ns()}-{Sink.count}.eml")
            head = (
                f"X-Sink-TLS: {'yes' if session.ssl is not None else 'no'}\r\n"
                f"X-Sink-Auth: {'yes' if session.authenticated else 'no'}\r\n"
                f"X-Sink-Rcpt: {','.join(envelope.rcpt_tos)}\r\n"
            ).encode()
            with open(name + ".part", "wb") as f:
                f.write(head + envelope.original_content)
            os.rename(name + ".part", name)
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        return AuthResult(success=ok, handled=False)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    controller = Controller(
        Sink(),
        hostname="127.0.0.1",
        port=args.port,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
