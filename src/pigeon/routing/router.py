"""The router: where a forward-path goes (local mailbox, alias, remote) or why it is refused.

Theory of operation. The router is asked twice about every recipient:

1. At RCPT time, :meth:`Router.check_recipient` decides whether to accept the forward-path.
   For a local domain the recipient must be a mailbox, an alias, or fall under a catch-all,
   else ``550 5.1.1`` (Pigeon never accepts mail for an unknown local user only to bounce
   it later). A non-local domain is accepted only when the caller allows relaying
   (authenticated submission), else ``554 5.7.1``. A mailbox already at or over its quota
   gets ``552 5.2.2``.
2. At enqueue time, :meth:`Router.expand` turns the accepted address into final
   destinations: aliases are expanded (depth-first, bounded, loop-safe, duplicates
   removed), ``user+tag`` becomes ``user``, and each destination is marked local or remote.

Lookup rules, in order, for ``local@domain`` in a local domain:

- the alias ``local@domain``, then the alias ``local`` (see :mod:`pigeon.routing.aliases`);
  then the same two for the local part without its ``+tag`` (subaddressing, RFC 5233);
- the mailbox ``local@domain``, then the mailbox without ``+tag``, then a catch-all
  ``@domain`` (which makes the tag-less local part a mailbox of its own);
- ``postmaster`` and ``abuse`` always resolve (RFC 5321 §4.5.1, RFC 2142): with no alias
  and no mailbox they go to ``postmaster@<first local domain>``, which is a mailbox even
  when no account exists for it (its Maildir is created on first delivery). The bare
  ``<postmaster>`` forward-path resolves the same way.

Mailbox names are case-insensitive (the local part is lower-cased for lookup). Percent
hacks (``user%host``), bang paths (``host!user``) and quoted ``@`` in a local part are
never relayed: they are looked up literally as local parts. An address literal domain is
local only when it is listed in ``domains.local``.

An alias whose target is the alias itself (``bob: bob, bob@example.net``) delivers that
target to the mailbox ``bob`` (the classic "keep a copy" idiom); any other loop drops the
looping branch and logs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pigeon.mail.address import AddressError, Domain, ForwardPath, Mailbox, parse_mailbox
from pigeon.mail.reply import Reply
from pigeon.routing.aliases import AliasEntry, AliasTable, load_aliases
from pigeon.storage.accounts_port import AccountStore, canonical_domain
from pigeon.storage.mailbox_port import MailboxStore

if TYPE_CHECKING:
    from pigeon.config import Settings

__all__ = [
    "MAX_ALIAS_DEPTH",
    "MAX_EXPANSION",
    "RECIPIENT_DELIMITER",
    "Destination",
    "Router",
]

log = logging.getLogger("pigeon.routing")

# Postfix's defaults are virtual_alias_recursion_limit = 100 and
# virtual_alias_expansion_limit = 1000; real alias chains are a few levels deep, so 20
# levels is generous and keeps a bad file from costing much.
MAX_ALIAS_DEPTH = 20
MAX_EXPANSION = 1000
# The subaddress separator (RFC 5233): ``user+tag`` is delivered to ``user``.
RECIPIENT_DELIMITER = "+"
# RFC 5321 §4.5.1 (postmaster) and RFC 2142 §2 (abuse): must always be deliverable.
_ROLE_NAMES = frozenset({"postmaster", "abuse"})


@dataclass(frozen=True)
class Destination:
    """A final destination of one accepted recipient.

    Attributes:
        address: the final address: for ``local``, the mailbox's address (lower-cased
            local part); for ``remote``, the target as written (domain canonical).
        route: ``local`` (the MDA) or ``remote`` (the SMTP client).
        original: the address that was expanded (the RCPT TO forward-path).
    """

    address: str
    route: Literal["local", "remote"]
    original: str


def _strip_subaddress(local: str) -> str:
    base, sep, _ = local.partition(RECIPIENT_DELIMITER)
    return base if sep and base else local


def _address_text(local: str, domain: str) -> str:
    return str(Mailbox(local, Domain(domain)))


class Router:
    """Routing decisions for forward-paths (see the module docstring).

    Args:
        settings: Pigeon settings (``domains.local``, ``server.hostname``,
            ``server.data_dir``, ``aliases.file``).
        accounts: the account store (mailboxes, catch-alls, quotas).
        aliases: an alias table; default: read ``settings.aliases.file`` when set.
        mailboxes: the mailbox store used for quota usage at RCPT time; default: the
            Maildir store under ``<data_dir>/mail``.

    Raises:
        AliasFileError: the aliases file cannot be read or is invalid.
    """

    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        *,
        aliases: AliasTable | None = None,
        mailboxes: MailboxStore | None = None,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        local = [canonical_domain(d) for d in settings.domains.local]
        self._postmaster_domain = local[0] if local else canonical_domain(
            settings.server.hostname
        )
        self._config_local = frozenset([*local, self._postmaster_domain])
        self._postmaster_key = f"postmaster@{self._postmaster_domain}"
        if aliases is None:
            aliases = self._load_aliases()
        self._aliases = aliases
        if mailboxes is None:
            from pigeon.storage.maildir.store import MaildirStore

            mailboxes = MaildirStore(
                settings.server.data_dir / "mail", hostname=settings.server.hostname
            )
        self._mailboxes = mailboxes

    @property
    def _local(self) -> frozenset[str]:
        """Local domains: the config's and those added with ``pigeon domain add``.

        Read from the account store on every use, so a domain added while the server runs
        counts at once.
        """
        list_domains = getattr(self._accounts, "list_domains", None)
        if list_domains is None:
            return self._config_local
        return self._config_local.union(list_domains())

    def _user_alias(self, key: str) -> str | None:
        """The user owning the alias ``key`` (``pigeon user alias add``), or None."""
        alias_owner = getattr(self._accounts, "alias_owner", None)
        return None if alias_owner is None else alias_owner(key)

    def _load_aliases(self) -> AliasTable:
        path = self._settings.aliases.file
        return AliasTable() if path is None else load_aliases(path)

    def reload_aliases(self) -> None:
        """Re-read ``settings.aliases.file``; the old table stays when the file is invalid.

        Raises:
            AliasFileError: the file cannot be read or is invalid.
        """
        self._aliases = self._load_aliases()

    @property
    def postmaster(self) -> str:
        """The mailbox that ``postmaster`` and ``abuse`` fall back to."""
        return self._postmaster_key

    # -- lookups -------------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for ``domain`` is delivered here.

        Args:
            domain: a domain in any case, U-labels or A-labels, or an address literal.
        """
        try:
            return canonical_domain(domain) in self._local
        except ValueError:
            return False

    def _split(self, address: str) -> tuple[str, str]:
        """(decoded local part, canonical domain); a bare local part gets the postmaster
        domain (the bare ``<postmaster>``)."""
        text = address.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        if "@" not in text:
            return text, self._postmaster_domain
        try:
            mailbox = parse_mailbox(text, smtputf8=True)
        except AddressError:
            local, _, domain = text.rpartition("@")
            try:
                return local, canonical_domain(domain)
            except ValueError:
                return local, domain.lower()
        assert mailbox.domain is not None
        return mailbox.local_part, mailbox.domain.name

    def _has_mailbox(self, key: str) -> bool:
        return key == self._postmaster_key or self._accounts.get_mailbox(key) is not None

    def _has_catch_all(self, domain: str) -> bool:
        return self._accounts.get_mailbox("@" + domain) is not None

    def _alias(self, local: str, domain: str) -> AliasEntry | None:
        entry = self._aliases.lookup(local, domain)
        base = _strip_subaddress(local)
        if entry is None and base != local:
            entry = self._aliases.lookup(base, domain)
        return entry

    def _mailbox_key(self, local: str, domain: str) -> str | None:
        """The mailbox for an address in a local domain, aliases aside."""
        key = f"{local.lower()}@{domain}"
        if self._has_mailbox(key):
            return key
        base = _strip_subaddress(local).lower()
        base_key = f"{base}@{domain}"
        if base_key != key and self._has_mailbox(base_key):
            return base_key
        owner = self._user_alias(key) or (base_key != key and self._user_alias(base_key))
        if owner:
            return owner
        if self._has_catch_all(domain):
            return base_key
        return None

    def _role_fallback(self, local: str) -> bool:
        return _strip_subaddress(local).lower() in _ROLE_NAMES

    def mailbox_for(self, address: str) -> str | None:
        """The local mailbox an address is delivered to, without alias expansion.

        Args:
            address: ``local@domain`` text (as in :attr:`Destination.address`) or the bare
                ``postmaster``.

        Returns:
            The mailbox key (``bob@example.com``), or None when the domain is not local
            or no mailbox, catch-all or postmaster rule matches.
        """
        local, domain = self._split(address)
        if domain not in self._local:
            return None
        key = self._mailbox_key(local, domain)
        if key is not None:
            return key
        if self._role_fallback(local) and self._alias(local, domain) is None:
            return self._postmaster_key
        return None

    def is_alias(self, address: str) -> bool:
        """True when ``address`` (in a local domain) is the name of an alias."""
        local, domain = self._split(address)
        return domain in self._local and self._alias(local, domain) is not None

    def quota_for(self, mailbox_key: str) -> int | None:
        """The quota of a mailbox in bytes, or None for no limit.

        A mailbox that exists through a catch-all has the catch-all's quota.

        Args:
            mailbox_key: a key returned by :meth:`mailbox_for`.
        """
        info = self._accounts.get_mailbox(mailbox_key)
        if info is None:
            _, _, domain = mailbox_key.rpartition("@")
            info = self._accounts.get_mailbox("@" + domain)
        return None if info is None else info.quota

    # -- RCPT time -----------------------------------------------------------------------

    def check_recipient(self, forward_path: ForwardPath, *, relay_allowed: bool) -> Reply | None:
        """Decide at RCPT time whether to accept a forward-path (RFC 5321 §4.1.1.3).

        Args:
            forward_path: the RCPT TO argument.
            relay_allowed: the client may send to non-local domains (authenticated).

        Returns:
            None to accept, else the reply to send: ``554 5.7.1`` relay denied,
            ``550 5.1.1`` unknown local user, ``552 5.2.2`` mailbox full.
        """
        mailbox = forward_path.mailbox
        if mailbox.domain is None:
            return None  # the bare <postmaster>, RFC 5321 §4.1.1.3
        domain = mailbox.domain.name
        if not self.is_local_domain(domain):
            if relay_allowed:
                return None
            return Reply(554, "5.7.1", f"{forward_path}: Relay access denied")
        domain = canonical_domain(domain)
        local = mailbox.local_part
        if self._alias(local, domain) is not None:
            return None
        key = self._mailbox_key(local, domain)
        if key is None:
            if self._role_fallback(local):
                return None
            return Reply(
                550, "5.1.1", f"{forward_path}: Recipient address rejected: User unknown"
            )
        quota = self.quota_for(key)
        if quota is not None and self._mailboxes.usage(key) >= quota:
            return Reply(552, "5.2.2", f"{forward_path}: Mailbox full")
        return None

    # -- enqueue time --------------------------------------------------------------------

    def expand(self, address: str) -> list[Destination]:
        """Expand an accepted recipient into its final destinations.

        Args:
            address: the recipient as text (``bob+tag@example.com``, ``postmaster``).

        Returns:
            Destinations in alias-file order, duplicates removed, never empty: a local
            address that resolves to nothing is returned as one local destination, for the
            MDA to fail with ``5.1.1``. ``original`` is ``address`` for every destination.
        """
        state = _Expansion(original=address)
        local, domain = self._split(address)
        self._visit(local, domain, (), state)
        if not state.found:
            fallback = (
                _address_text(local.lower(), domain) if domain in self._local
                else _address_text(local, domain)
            )
            route: Literal["local", "remote"] = "local" if domain in self._local else "remote"
            return [Destination(fallback, route, address)]
        return list(state.found.values())

    def _visit(self, local: str, domain: str, chain: tuple[str, ...], state: _Expansion) -> None:
        if len(state.found) >= MAX_EXPANSION:
            if not state.truncated:
                state.truncated = True
                log.warning("alias expansion for %s stopped at %d destinations",
                            state.original, MAX_EXPANSION)
            return
        if domain not in self._local:
            state.add(_address_text(local, domain), "remote")
            return
        key = f"{local.lower()}@{domain}"
        if key in chain:
            log.warning("alias loop for %s: %s -> %s; branch dropped",
                        state.original, " -> ".join(chain), key)
            return
        if key in state.done:
            return
        entry = self._alias(local, domain)
        if entry is not None and len(chain) >= MAX_ALIAS_DEPTH:
            log.warning("alias expansion for %s deeper than %d levels at %s; branch dropped",
                        state.original, MAX_ALIAS_DEPTH, key)
            return
        if entry is None:
            self._deliver_local(local, domain, (*chain, key), state)
        else:
            for target in entry.targets:
                t_local, t_domain = (
                    self._split(target) if "@" in target else (target, domain)
                )
                if t_domain == domain and t_local.lower() == local.lower():
                    self._deliver_local(local, domain, (*chain, key), state)
                else:
                    self._visit(t_local, t_domain, (*chain, key), state)
        state.done.add(key)

    def _deliver_local(
        self, local: str, domain: str, chain: tuple[str, ...], state: _Expansion
    ) -> None:
        key = self._mailbox_key(local, domain)
        if key is not None:
            local, _, domain = key.rpartition("@")
            state.add(_address_text(local, domain), "local")
        elif self._role_fallback(local):
            pm_local, _, pm_domain = self._postmaster_key.rpartition("@")
            self._visit(pm_local, pm_domain, chain, state)
        else:
            state.add(_address_text(local.lower(), domain), "local")


@dataclass
class _Expansion:
    """The state of one :meth:`Router.expand` call."""

    original: str
    found: dict[str, Destination] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # keys fully expanded (diamonds once)
    truncated: bool = False

    def add(self, address: str, route: Literal["local", "remote"]) -> None:
        if address not in self.found and len(self.found) < MAX_EXPANSION:
            self.found[address] = Destination(address, route, self.original)
