"""The mail user agent side: composing messages and handing them on.

``compose`` builds MIME messages with the stdlib :mod:`email` package; ``send`` submits
them with Pigeon's own SMTP client (STARTTLS/implicit TLS, AUTH), ``direct`` delivers to
the recipients' MX hosts, ``local_queue`` hands them to the local Pigeon's queue;
``sendmail`` is the Unix sendmail interface; ``bulk`` (with ``bulk_render``,
``bulk_state``, ``fastmime`` and ``bulk_console``) sends personalised campaigns,
resumably. The ``pigeon send|sendmail|bulk`` commands in :mod:`pigeon.cli` are thin
layers over these modules.
"""
