"""Config texts shared by the config tests: SPEC.md's example grown into a small fleet."""

from __future__ import annotations

from pathlib import Path

# SPEC.md's example, plus a local client, named jobs, a policy and several sinks.
FLEET = """\
domain = ".corporate.drenpress.com"

[catalog]
url = "sqlite:///var/lib/strongroom/catalog.db"

[repositories.main]
url = "/srv/strongroom/main"
password_file = "/etc/strongroom/main.pass"

[repositories.vault]
url = "s3://bucket/vault?endpoint=http://127.0.0.1:9000"
password_command = ["pass", "show", "vault"]

[policies.databases]
within = "2d"
daily = 30

[defaults]
repository = "main"
retention = { daily = 7, weekly = 4, monthly = 12 }
notify = ["oncall"]
exclude = ["*.swp"]

[clients.dracula]
transport = "ssh"
port = 22
ssh_command = ["ssh", "-l", "root"]
agent_command = ["strongroom", "agent"]
groups = ["midnight"]
sources = ["/etc", "/srv", "/var/backups/sql"]
exclude = ["*.tmp", "/srv/cache"]

[[clients.dracula.requires]]
kind = "marker"
name = "sql-dump"
max_age = "12h"

[[clients.dracula.requires]]
kind = "fresh-file"
path = "/var/backups/sql/latest.dump"
max_age = "20h"
min_size = "1KiB"

[clients.dracula.jobs.sql]
sources = ["/var/backups/sql"]
repository = "vault"
retention = "databases"
notify = ["oncall", "chat"]
schedule = "03:30"

[[clients.dracula.jobs.sql.hooks]]
when = "before"
command = ["/usr/local/bin/dump-all"]
timeout = "1h"

[clients.igor]
host = "igor.lab.example.net"
port = 2222
groups = ["midnight", "lab"]
sources = ["/home"]

[clients.director]
transport = "local"
sources = ["/etc"]
exclude = []

[clients.vlad]
groups = ["lab"]

[clients.vlad.jobs.www]
sources = ["/srv/www"]

[[clients.vlad.jobs.www.requires]]
kind = "command"
command = ["/usr/bin/true"]
on = "client"
timeout = "30s"

[notify.oncall]
kind = "command"
command = ["/usr/local/bin/page-oncall"]
events = ["run.failed", "client.unreachable", "prerequisite.failed", "client.stale"]

[notify.chat]
kind = "webhook"
url = "https://chat.example.net/hooks/T0KEN-WEBHOOK"
headers = { Authorization = "Bearer T0KEN-HEADER" }

[notify.mail]
kind = "email"
to = ["ops@example.net"]
from = "strongroom@example.net"

[notify.log]
kind = "syslog"

[notify.phones]
kind = "apprise"
urls = ["ntfy://T0KEN-APPRISE@ntfy.example.net/backups"]
events = ["media.due"]
"""

# The smallest useful config; broken variants are built from it.
MINIMAL = """\
[repositories.main]
url = "/srv/main"

[clients.dracula]
repository = "main"
sources = ["/etc"]
"""


def write_config(directory: Path, text: str, name: str = "strongroom.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path
