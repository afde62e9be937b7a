"""The servers Pigeon is compared with: each one started on 127.0.0.1 for one run."""
