"""STAND-IN for OMF 6's user_factory resource controller (Ruby, from omf_rc / nitos_testbed_rc), which cannot be
installed here (RubyGems is not reachable). It is a conformance fixture written from the facts of FRCP and of
user_factory's behaviour (/work/shared/reference/omf.md), not a port of its code.

It speaks real FRCP over the real RabbitMQ (its topic is a topic exchange; it informs on its own topics), checks
every request's JWT signature against trusted roots (an unsigned, tampered or untrusted message is refused and
answered with nothing, as the Ruby controller drops it), signs its own informs, and does user_factory's real work in
a throwaway directory instead of the system:

- ``create {type: user, username}`` -> "useradd": ``<root>/home/<username>/.ssh/id_rsa[.pub]`` (a real RSA key
  pair, kept if it exists: creating an existing user is how the broker reaches it again) and an entry in
  ``<root>/passwd.json``; answers CREATION.OK {res_id: the child's address, uid, username, hrn} (no key), or
  CREATION.FAILED {reason}; then the child informs on its own topic
  STATUS {status_type: APP_EVENT, event: EXIT, exit_code, msg, uid, pub_key: the public key in PEM} with no cid, as
  omf.md describes NITOS' user controller (``useradd_fails_with`` makes useradd fail: exit_code and msg, no key).
  The real controller sleeps before informing so that the broker has subscribed to the child; this stand-in
  instead publishes the EXIT "mandatory" on a confirmed channel and tries again until the broker routes it to a
  subscriber of the child's topic (not the stand-in itself, which listens to o.op only there), or the child is
  released (no timing: the test cannot lose the EXIT to a slow subscriber);
- on the child's topic, ``configure {cert: PEM}`` -> ``~/.omf/user_cert.pem``; ``configure {auth_keys: [...]}``
  -> ``~/.ssh/authorized_keys`` (overwritten); answers STATUS {status_type: APP_EVENT, event: EXIT, exit_code: 0};
- ``release {rid: child}`` on the factory's topic -> RELEASED {res_id};
- ``configure {deluser: {username}}`` on the factory's topic -> the home and the passwd entry removed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.testbed.omf.frcp import FrcpMessage, SignatureChecker, Signer, address, declare_topic, encode, topic_of
from tests.testbed.omf.frcp_standin import FrcpStandIn

LOGIN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class UserFactoryStandIn(FrcpStandIn):
    """A stand-in for the Ruby user_factory controller (see the module docstring), run in a thread."""

    def __init__(self, url: str, topic: str, root: Path, signer: Signer, checker: SignatureChecker) -> None:
        super().__init__(url, topic, signer, checker)
        self.root = root
        self.children: dict[str, str] = {}  # child topic -> username
        # When set, create is answered CREATION.FAILED with these words (the controller failing, e.g. a full disk).
        self.fail_with = ""
        # When set, create is answered CREATION.OK but useradd then fails: the EXIT carries (exit_code, msg).
        self.useradd_fails_with: tuple[int, str] | None = None
        self._confirmed: Any = None  # a channel with publisher confirms, for the EXIT informs (see _exit)

    # -- user_factory's work ----------------------------------------------------------------------------------
    def work(self, topic: str, message: FrcpMessage) -> FrcpMessage:
        props = message.props
        if topic == self.topic:
            if message.op == "create":
                return self._create(message)
            if message.op == "release":
                child = topic_of(message.rid or "")
                if child not in self.children:
                    return self.inform(message, "ERROR", {"reason": f"no child {message.rid!r}"})
                self.channel.queue_unbind(queue=self.queue, exchange=child, routing_key="o.op")
                del self.children[child]
                return self.inform(message, "RELEASED", {"res_id": message.rid})
            if message.op == "configure" and isinstance(props.get("deluser"), dict):
                username = str(props["deluser"].get("username", ""))
                self._check_login(username)
                shutil.rmtree(self._home(username), ignore_errors=True)
                passwd = self._passwd()
                passwd.pop(username, None)
                self._write_passwd(passwd)
                return self.inform(message, "STATUS", {"status_type": "APP_EVENT", "event": "EXIT", "exit_code": 0})
            return self.inform(message, "ERROR", {"reason": f"user_factory does not {message.op} {sorted(props)}"})
        username = self.children.get(topic)
        if username is None or message.op != "configure":
            return self.inform(message, "ERROR", {"reason": f"{message.op} is not served on {topic}"}, topic)
        home = self._home(username)
        done: dict[str, Any] = {"status_type": "APP_EVENT", "event": "EXIT", "exit_code": 0, "username": username}
        if "cert" in props:
            (home / ".omf").mkdir(parents=True, exist_ok=True)
            (home / ".omf" / "user_cert.pem").write_text(str(props["cert"]))
            done["msg"] = "certificate installed"
        elif "auth_keys" in props:
            keys = props["auth_keys"]
            if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
                return self.inform(message, "ERROR", {"reason": "auth_keys is not a list of keys"}, topic)
            (home / ".ssh" / "authorized_keys").write_text("".join(f"{key}\n" for key in keys))
            done["msg"] = f"{len(keys)} key(s) installed"
        else:
            return self.inform(message, "ERROR", {"reason": f"cannot configure {sorted(props)}"}, topic)
        return self.inform(message, "STATUS", done, topic)

    def _create(self, message: FrcpMessage) -> FrcpMessage:
        props = message.props
        username = str(props.get("username", ""))
        if props.get("type") != "user":
            return self.inform(message, "CREATION.FAILED", {"reason": f"cannot create a {props.get('type')!r}"})
        if not LOGIN.match(username):
            return self.inform(message, "CREATION.FAILED", {"reason": f"useradd: invalid user name '{username}'"})
        if self.fail_with:
            return self.inform(message, "CREATION.FAILED", {"reason": self.fail_with})
        child = f"user-{username}"
        self.children[child] = username
        # Requests only: the child's informs must reach the broker's subscription, not our own queue (see _exit).
        declare_topic(self.channel, child)
        self.channel.queue_bind(queue=self.queue, exchange=child, routing_key="o.op")
        exited = self._useradd(username)
        self.later(0, lambda: self._exit(child, exited))
        return self.inform(
            message,
            "CREATION.OK",
            {
                "res_id": address(self.host, child),
                "uid": exited.get("uid"),
                "username": username,
                "hrn": props.get("hrn", username),
            },
        )

    def _useradd(self, username: str) -> dict[str, Any]:
        """useradd's work in the throwaway root, and the EXIT's props."""
        if self.useradd_fails_with is not None:
            exit_code, words = self.useradd_fails_with
            return {"status_type": "APP_EVENT", "event": "EXIT", "exit_code": exit_code, "msg": words}
        home = self._home(username)
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        if not (ssh / "id_rsa").exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            (ssh / "id_rsa").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            (ssh / "id_rsa.pub").write_text(f"{public.decode('ascii')} {username}@testbed\n")
        passwd = self._passwd()
        uid = passwd.setdefault(username, 2000 + len(passwd))
        self._write_passwd(passwd)
        public_key = serialization.load_ssh_public_key((ssh / "id_rsa.pub").read_bytes())
        pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {
            "status_type": "APP_EVENT",
            "event": "EXIT",
            "exit_code": 0,
            "msg": 0,
            "uid": uid,
            "pub_key": pem.decode("ascii"),
        }

    def _exit(self, child: str, props: dict[str, Any]) -> None:
        """Inform the EXIT on the child's topic once someone listens there (tried again until then, or until the
        child is released): an inform published to nobody is lost, as with the real controller."""
        if child not in self.children:
            return
        if self._confirmed is None:
            self._confirmed = self.channel.connection.channel()
            self._confirmed.confirm_delivery()
        body, content_type = encode(self.inform(None, "STATUS", props, child), self.signer)
        try:
            self._confirmed.basic_publish(
                exchange=child,
                routing_key="o.info",
                body=body,
                properties=pika.BasicProperties(content_type=content_type),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            self.later(0.02, lambda: self._exit(child, props))

    def _check_login(self, username: str) -> None:
        if not LOGIN.match(username):
            raise ValueError(f"invalid user name '{username}'")

    def _home(self, username: str) -> Path:
        self._check_login(username)
        return self.root / "home" / username

    def _passwd(self) -> dict[str, int]:
        path = self.root / "passwd.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def _write_passwd(self, passwd: dict[str, int]) -> None:
        (self.root / "passwd.json").write_text(json.dumps(passwd, sort_keys=True))
