"""The Python `pusher` server SDK against Tidings' Pusher HTTP API.

Usage: pusher_sdk.py HOST PORT. Triggers events, a batch, queries channels
and users, terminates a user's connections; every answer must parse in the
SDK and have Pusher's shape. Prints one JSON line of what it saw; exits
non-zero on the first failure.
"""

import json
import sys

import pusher

host, port = sys.argv[1], int(sys.argv[2])
client = pusher.Pusher(
    app_id="1234", key="app-key", secret="app-secret-123", ssl=False, host=host, port=port
)

seen = {}
seen["trigger"] = client.trigger("py-news", "from-python", {"lang": "python"})
seen["trigger_many"] = client.trigger(["py-news", "py-other"], "from-python", {"n": 2})
seen["batch"] = client.trigger_batch(
    [
        {"channel": "py-news", "name": "batched", "data": {"n": 3}},
        {"channel": "py-other", "name": "batched", "data": {"n": 4}},
    ]
)
assert seen["batch"] == {"batch": [{}, {}]} or seen["batch"] == {}, seen
seen["channels"] = client.channels_info(prefix_filter="py-")
assert "py-news" in seen["channels"]["channels"], seen
seen["channel"] = client.channel_info("py-news", ["subscription_count"])
assert seen["channel"]["occupied"] is True, seen
seen["users"] = client.users_info("presence-py")
assert seen["users"] == {"users": []}, seen
seen["terminate"] = client.terminate_user_connections("nobody")

# A wrong secret is refused with 401, which the SDK raises.
wrong = pusher.Pusher(app_id="1234", key="app-key", secret="wrong-secret", ssl=False, host=host, port=port)
try:
    wrong.trigger("py-news", "x", {})
    raise SystemExit("a wrong secret was accepted")
except pusher.errors.PusherBadAuth:
    seen["wrong_secret"] = "refused"
print(json.dumps(seen))
