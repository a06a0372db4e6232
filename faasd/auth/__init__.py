"""API tokens: who may call what over HTTP.

`tokens` is the pure core (records, scopes, which path needs which scope, the verdict on one
request); `store` keeps hashed tokens in SQLite in the state directory and notices the CLI's
changes without a restart; `middleware` applies the verdict to every route of the app.
"""
