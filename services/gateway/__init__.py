"""The HTTP gateway for agency systems in any language: signed ingest, the inbox, webhooks.

``python -m services.gateway`` (``lianfang serve gateway``) runs it; :mod:`.app` holds the service,
:mod:`.httpsig` the request-signing profile (RFC 9421 + RFC 9530) that clients implement.
"""
