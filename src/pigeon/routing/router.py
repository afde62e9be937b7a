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

What the router reads from the account store (local domains, mailboxes, catch-alls, user
aliases) it keeps for as long as the store's ``version()`` token stays the same; each
public method asks for the token once, so a mailbox, user or domain added or removed while
the server runs (``pigeon mailbox add``, ``pigeon user add``, ``pigeon domain add``) counts
from the next call on, as if the store were read every time. A store without ``version()``
is read afresh by every call. Quota usage is never kept: it is asked of the mailbox store
each time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pigeon.mail.address import AddressError, Domain, ForwardPath, Mailbox, parse_mailbox
from pigeon.mail.reply import Reply
from pigeon.routing.aliases import AliasEntry, AliasTable, load_aliases
from pigeon.storage.accounts_port import AccountStore, MailboxInfo, canonical_domain
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
# Lookups an account view keeps at most per kind: a client trying many unknown addresses
# must not grow it without end. A full table is emptied and filled again.
_VIEW_MAX_ENTRIES = 10_000


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


class _AccountView:
    """The account store as read while its ``version()`` token is ``version``.

    Lookups are kept per key. Several threads may share one view: a dict's get and set
    are atomic, and two threads that miss the same key at once both read the store (the
    answer kept is one of theirs). A view is dropped, never updated, when the token changes.

    Args:
        accounts: the account store.
        version: the store's token when the view was made; None for a store that has none
            (the view then lives for one router call).
        local: the local domains (config's and store's), canonical.
    """

    __slots__ = ("_accounts", "_alias_owner", "_mailboxes", "_owners", "expansions", "local",
                 "version")

    def __init__(
        self, accounts: AccountStore, version: Hashable | None, local: frozenset[str]
    ) -> None:
        self._accounts = accounts
        self._alias_owner: Callable[[str], str | None] | None = getattr(
            accounts, "alias_owner", None
        )
        self.version = version
        self.local = local
        self._mailboxes: dict[str, MailboxInfo | None] = {}
        self._owners: dict[str, str | None] = {}
        # Router.expand results by address (those that logged nothing), for this alias table.
        self.expansions: dict[str, tuple[Destination, ...]] = {}

    def mailbox(self, key: str) -> MailboxInfo | None:
        """The store's ``get_mailbox(key)``."""
        try:
            return self._mailboxes[key]
        except KeyError:
            pass
        info = self._accounts.get_mailbox(key)
        if len(self._mailboxes) >= _VIEW_MAX_ENTRIES:
            self._mailboxes.clear()
        self._mailboxes[key] = info
        return info

    def alias_owner(self, key: str) -> str | None:
        """The store's ``alias_owner(key)`` (``pigeon user alias add``); None without one."""
        if self._alias_owner is None:
            return None
        try:
            return self._owners[key]
        except KeyError:
            pass
        owner = self._alias_owner(key)
        if len(self._owners) >= _VIEW_MAX_ENTRIES:
            self._owners.clear()
        self._owners[key] = owner
        return owner


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
        self._version: Callable[[], Hashable] | None = getattr(accounts, "version", None)
        self._view_now: _AccountView | None = None

    def _view(self) -> _AccountView:
        """The account store as it is now: the kept view while the store's token is the
        same, else a new one (see the module docstring)."""
        if self._version is None:
            return _AccountView(self._accounts, None, self._read_local())
        version = self._version()
        view = self._view_now
        if view is None or view.version != version:
            view = _AccountView(self._accounts, version, self._read_local())
            self._view_now = view
        return view

    def _read_local(self) -> frozenset[str]:
        """Local domains: the config's and those added with ``pigeon domain add``."""
        list_domains = getattr(self._accounts, "list_domains", None)
        if list_domains is None:
            return self._config_local
        return self._config_local.union(list_domains())

    def _load_aliases(self) -> AliasTable:
        path = self._settings.aliases.file
        return AliasTable() if path is None else load_aliases(path)

    def reload_aliases(self) -> None:
        """Re-read ``settings.aliases.file``; the old table stays when the file is invalid.

        Raises:
            AliasFileError: the file cannot be read or is invalid.
        """
        self._aliases = self._load_aliases()
        self._view_now = None  # its expansions were made with the old table

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
            return canonical_domain(domain) in self._view().local
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

    def _has_mailbox(self, view: _AccountView, key: str) -> bool:
        return key == self._postmaster_key or view.mailbox(key) is not None

    def _has_catch_all(self, view: _AccountView, domain: str) -> bool:
        return view.mailbox("@" + domain) is not None

    def _alias(self, local: str, domain: str) -> AliasEntry | None:
        entry = self._aliases.lookup(local, domain)
        base = _strip_subaddress(local)
        if entry is None and base != local:
            entry = self._aliases.lookup(base, domain)
        return entry

    def _mailbox_key(self, view: _AccountView, local: str, domain: str) -> str | None:
        """The mailbox for an address in a local domain, aliases aside."""
        key = f"{local.lower()}@{domain}"
        if self._has_mailbox(view, key):
            return key
        base = _strip_subaddress(local).lower()
        base_key = f"{base}@{domain}"
        if base_key != key and self._has_mailbox(view, base_key):
            return base_key
        owner = view.alias_owner(key) or (base_key != key and view.alias_owner(base_key))
        if owner:
            return owner
        if self._has_catch_all(view, domain):
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
        view = self._view()
        if domain not in view.local:
            return None
        key = self._mailbox_key(view, local, domain)
        if key is not None:
            return key
        if self._role_fallback(local) and self._alias(local, domain) is None:
            return self._postmaster_key
        return None

    def is_alias(self, address: str) -> bool:
        """True when ``address`` (in a local domain) is the name of an alias."""
        local, domain = self._split(address)
        return domain in self._view().local and self._alias(local, domain) is not None

    def quota_for(self, mailbox_key: str) -> int | None:
        """The quota of a mailbox in bytes, or None for no limit.

        A mailbox that exists through a catch-all has the catch-all's quota.

        Args:
            mailbox_key: a key returned by :meth:`mailbox_for`.
        """
        return self._quota(self._view(), mailbox_key)

    def _quota(self, view: _AccountView, mailbox_key: str) -> int | None:
        info = view.mailbox(mailbox_key)
        if info is None:
            _, _, domain = mailbox_key.rpartition("@")
            info = view.mailbox("@" + domain)
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
        view = self._view()
        try:
            domain = canonical_domain(mailbox.domain.name)
        except ValueError:
            domain = None
        if domain is None or domain not in view.local:
            if relay_allowed:
                return None
            return Reply(554, "5.7.1", f"{forward_path}: Relay access denied")
        local = mailbox.local_part
        if self._alias(local, domain) is not None:
            return None
        key = self._mailbox_key(view, local, domain)
        if key is None:
            if self._role_fallback(local):
                return None
            return Reply(
                550, "5.1.1", f"{forward_path}: Recipient address rejected: User unknown"
            )
        quota = self._quota(view, key)
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
        view = self._view()
        known = view.expansions.get(address)
        if known is not None:
            return list(known)
        state = _Expansion(original=address, view=view)
        local, domain = self._split(address)
        self._visit(local, domain, (), state)
        if state.found:
            found = tuple(state.found.values())
        else:
            fallback = (
                _address_text(local.lower(), domain) if domain in view.local
                else _address_text(local, domain)
            )
            route: Literal["local", "remote"] = "local" if domain in view.local else "remote"
            found = (Destination(fallback, route, address),)
        # An expansion that logged a warning is made again next time, so the warning is
        # logged for every message it concerns.
        if not state.warned:
            if len(view.expansions) >= _VIEW_MAX_ENTRIES:
                view.expansions.clear()
            view.expansions[address] = found
        return list(found)

    def _visit(self, local: str, domain: str, chain: tuple[str, ...], state: _Expansion) -> None:
        if len(state.found) >= MAX_EXPANSION:
            if not state.truncated:
                state.truncated = state.warned = True
                log.warning("alias expansion for %s stopped at %d destinations",
                            state.original, MAX_EXPANSION)
            return
        if domain not in state.view.local:
            state.add(_address_text(local, domain), "remote")
            return
        key = f"{local.lower()}@{domain}"
        if key in chain:
            state.warned = True
            log.warning("alias loop for %s: %s -> %s; branch dropped",
                        state.original, " -> ".join(chain), key)
            return
        if key in state.done:
            return
        entry = self._alias(local, domain)
        if entry is not None and len(chain) >= MAX_ALIAS_DEPTH:
            state.warned = True
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
        key = self._mailbox_key(state.view, local, domain)
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
    view: _AccountView
    found: dict[str, Destination] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # keys fully expanded (diamonds once)
    truncated: bool = False
    warned: bool = False  # a warning was logged

    def add(self, address: str, route: Literal["local", "remote"]) -> None:
        if address not in self.found and len(self.found) < MAX_EXPANSION:
            self.found[address] = Destination(address, route, self.original)
