"""Which server to submit to and with what credentials: options merged with a profile.

An option given on the command line wins over the profile; the profile wins over the
defaults (STARTTLS, certificate checked). The password is looked for in this order:
``--password-file``, ``$PIGEON_PASSWORD``, the profile's ``password_file``, the profile's
``password``, and last a prompt (only when the caller can prompt, i.e. on a terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pigeon.mua.profiles import PASSWORD_ENV_VAR, Profile, ProfileError, read_password_file
from pigeon.mua.send import DEFAULT_TIMEOUT, Security, ServerTarget, parse_server

__all__ = ["resolve_password", "resolve_target"]


def resolve_password(
    *,
    user: str,
    password_file: Path | None,
    profile: Profile | None,
    environ: Mapping[str, str],
    prompt: Callable[[str], str] | None,
) -> str:
    """Find the password for ``user`` (see the module docstring for the order).

    Args:
        user: the login, for the prompt.
        password_file: ``--password-file``, or None.
        profile: the profile in use, or None.
        environ: the environment.
        prompt: asks the user (hidden input), or None when there is no terminal.

    Returns:
        The password.

    Raises:
        ProfileError: a password file cannot be read, or no password is available.
    """
    if password_file is not None:
        return read_password_file(password_file)
    from_env = environ.get(PASSWORD_ENV_VAR)
    if from_env:
        return from_env
    if profile is not None and profile.password_file is not None:
        return read_password_file(profile.password_file)
    if profile is not None and profile.password is not None:
        return profile.password
    if prompt is not None:
        return prompt(f"Password for {user}")
    raise ProfileError(
        f"no password for {user}: use --password-file, ${PASSWORD_ENV_VAR} or a profile"
    )


def resolve_target(
    *,
    server: str | None,
    security: Security | None,
    user: str | None,
    password_file: Path | None,
    profile: Profile | None,
    ca_file: Path | None,
    insecure: bool,
    environ: Mapping[str, str],
    prompt: Callable[[str], str] | None,
    helo: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ServerTarget | None:
    """Build the submission target from the options and the profile.

    Args:
        server: ``--server host[:port]``, or None.
        security: ``--starttls``/``--tls``/``--plain``, or None.
        user: ``--user``, or None.
        password_file: ``--password-file``, or None.
        profile: the profile in use, or None.
        ca_file: ``--ca-file``, or None.
        insecure: ``--insecure``: do not check the certificate.
        environ: the environment (for ``$PIGEON_PASSWORD``).
        prompt: asks for a password, or None.
        helo: the EHLO name (default: this host's name).
        timeout: seconds to wait for each reply.

    Returns:
        The target, or None when neither the options nor the profile name a server.

    Raises:
        ProfileError: a bad server address, a bad security value, or no password.
    """
    address = server or (profile.server if profile else None)
    if address is None:
        return None
    chosen = security or (profile.security if profile else None) or "starttls"
    if chosen not in ("starttls", "tls", "plain"):
        raise ProfileError(f"unknown security {chosen!r}: use starttls, tls or plain")
    sec: Security = chosen  # type: ignore[assignment]
    try:
        host, port = parse_server(address, sec)
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    login = user or (profile.user if profile else None)
    password = None
    if login is not None:
        password = resolve_password(user=login, password_file=password_file, profile=profile,
                                    environ=environ, prompt=prompt)
    verify = not insecure and (profile.verify if profile else True)
    extra = {"helo": helo} if helo else {}
    return ServerTarget(
        host=host, port=port, security=sec, username=login, password=password,
        ca_file=ca_file or (profile.ca_file if profile else None), verify=verify,
        timeout=timeout, **extra,
    )
