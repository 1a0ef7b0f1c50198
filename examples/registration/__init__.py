"""The registration example: a FastAPI sign-up that hands the welcome e-mail to a worker.

Modules: `web` (the FastAPI app), `tasks` (the redismq App: the e-mail task and the
analytics handler), `mail` (composing and sending the e-mail once), `db` (SQLite),
`smtp_sink` (a local SMTP server that stores what it receives), `measure` (response time
with the e-mail sent inline versus queued), `kills` (e-mails repeated and dropped by key
while the worker is SIGKILLed). See README.md.
"""
