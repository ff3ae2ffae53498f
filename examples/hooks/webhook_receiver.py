"""Receives acexport's url hook: checks each event's signature, prints it, answers 204.

    python3 webhook_receiver.py 8099   # the secret in the file $HOOK_SECRET_FILE
"""

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = open(os.environ["HOOK_SECRET_FILE"], "rb").read().strip()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        signed = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signed, self.headers.get("X-Acexport-Signature", "")):
            self.send_response(401)  # a 4xx: acexport marks the event failed, visibly
        else:
            event = json.loads(body)  # the same id on every redelivery: drop repeats
            print(event["id"], event["type"], event["fromDate"], event["url"], flush=True)
            self.send_response(204)
        self.end_headers()


HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
