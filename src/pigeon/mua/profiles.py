"""Named sending profiles in ``~/.config/pigeon/client.toml`` and where passwords come from.

The file (``$XDG_CONFIG_HOME/pigeon/client.toml`` when that variable is set)::

    default = "work"            # used when no --server and no --profile is given

    [profile.work]
    server = "mail.example.org:587"
    security = "starttls"       # starttls | tls | plain
    user = "alice@example.org"
    password_file = "~/.config/pigeon/work.password"
    from = "Alice Example <alice@example.org>"
    # ca_file = "/etc/ssl/my-ca.pem"
    # verify = true

    [sendmail]
    profile = "work"            # pigeon sendmail submits here instead of the local queue

``password = "..."`` is accepted only when the file is readable by its owner alone (mode
0600), as for ``~/.netrc``. The password of a submission comes from, in this order:
``--password-file``, the ``PIGEON_PASSWORD`` environment variable, the profile's
``password_file`` or ``password``, and last a prompt when a terminal is attached.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PASSWORD_ENV_VAR",
    "ClientConfig",
    "Profile",
    "ProfileError",
    "client_config_path",
    "load_client_config",
    "read_password_file",
]

#: Environment variable holding the submission password.
PASSWORD_ENV_VAR = "PIGEON_PASSWORD"
_SECURITIES = ("starttls", "tls", "plain")
_PROFILE_KEYS = frozenset({"server", "security", "user", "password", "password_file", "from",
                           "ca_file", "verify"})


class ProfileError(ValueError):
    """The client configuration cannot be used; the text names the file and the key."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One ``[profile.NAME]`` table.

    Attributes:
        name: the profile's name.
        server: ``host[:port]``, or None.
        security: ``starttls``, ``tls`` or ``plain``, or None for the default.
        user: the login, or None.
        password: a password written in the file, or None.
        password_file: a file holding the password, or None.
        author: the default ``From`` address, or None.
        ca_file: certificates to trust, or None for the system's.
        verify: check the server certificate (default true).
    """

    name: str
    server: str | None = None
    security: str | None = None
    user: str | None = None
    password: str | None = None
    password_file: Path | None = None
    author: str | None = None
    ca_file: Path | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The whole client file.

    Attributes:
        path: where it was read from.
        profiles: profiles by name.
        default: the default profile's name, or None.
        sendmail_profile: the profile ``pigeon sendmail`` submits through, or None for the
            local queue.
    """

    path: Path
    profiles: dict[str, Profile]
    default: str | None = None
    sendmail_profile: str | None = None

    def profile(self, name: str | None) -> Profile | None:
        """The named profile, or the default one when ``name`` is None.

        Args:
            name: a profile name from ``--profile``, or None.

        Returns:
            The profile; None when no name is given and there is no default.

        Raises:
            ProfileError: the named profile does not exist.
        """
        chosen = name if name is not None else self.default
        if chosen is None:
            return None
        try:
            return self.profiles[chosen]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ProfileError(
                f"{self.path}: no profile {chosen!r} (profiles: {known})"
            ) from None


def client_config_path(environ: dict[str, str] | None = None) -> Path:
    """Where the client file lives: ``$XDG_CONFIG_HOME/pigeon/client.toml`` or
    ``~/.config/pigeon/client.toml``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "pigeon" / "client.toml"


def _text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{where}.{key}: must be a non-empty string")
    return value.strip()


def _path(table: dict[str, Any], key: str, where: str, base: Path) -> Path | None:
    value = _text(table, key, where)
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _profile(name: str, table: object, path: Path, private: bool) -> Profile:
    where = f"{path}: profile.{name}"
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: must be a table")
    unknown = sorted(set(table) - _PROFILE_KEYS)
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}")
    security = _text(table, "security", where)
    if security is not None and security not in _SECURITIES:
        raise ProfileError(f"{where}.security: must be one of {', '.join(_SECURITIES)}")
    verify = table.get("verify", True)
    if not isinstance(verify, bool):
        raise ProfileError(f"{where}.verify: must be true or false")
    password = table.get("password")
    if password is not None:
        if not isinstance(password, str):
            raise ProfileError(f"{where}.password: must be a string")
        if not private:
            raise ProfileError(
                f"{where}.password: the file may be read by others; chmod 600 {path} or "
                "use password_file"
            )
    return Profile(
        name=name,
        server=_text(table, "server", where),
        security=security,
        user=_text(table, "user", where),
        password=password,
        password_file=_path(table, "password_file", where, path.parent),
        author=_text(table, "from", where),
        ca_file=_path(table, "ca_file", where, path.parent),
        verify=verify,
    )


def load_client_config(path: Path | None = None) -> ClientConfig:
    """Read the client file.

    Args:
        path: the file; default :func:`client_config_path`.

    Returns:
        The configuration; an empty one when the default file does not exist.

    Raises:
        ProfileError: the file is unreadable, not TOML, or has a bad value (the message
            names the key).
    """
    explicit = path is not None
    path = path if path is not None else client_config_path()
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        if explicit:
            raise ProfileError(f"{path}: file not found") from None
        return ClientConfig(path, {})
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    private = not (mode & (stat.S_IRWXG | stat.S_IRWXO))
    unknown = sorted(set(data) - {"default", "profile", "sendmail"})
    if unknown:
        raise ProfileError(f"{path}: unknown key {unknown[0]!r}")
    tables = data.get("profile", {})
    if not isinstance(tables, dict):
        raise ProfileError(f"{path}: profile must be a table of tables")
    profiles = {name: _profile(name, table, path, private) for name, table in tables.items()}
    default = _text(data, "default", str(path))
    sendmail = data.get("sendmail", {})
    if not isinstance(sendmail, dict) or set(sendmail) - {"profile"}:
        raise ProfileError(f"{path}: sendmail: only the key 'profile' is known")
    sendmail_profile = _text(sendmail, "profile", f"{path}: sendmail")
    config = ClientConfig(path, profiles, default, sendmail_profile)
    for name in (default, sendmail_profile):
        if name is not None:
            config.profile(name)
    return config


def read_password_file(path: Path) -> str:
    """Read a password file: its first line, without the line ending.

    Args:
        path: the file.

    Returns:
        The password.

    Raises:
        ProfileError: the file cannot be read or is empty.
    """
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ProfileError(f"cannot read password file {path}: {reason}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ProfileError(f"password file {path} is empty")
    return password
