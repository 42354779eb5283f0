"""The web app served by the API process: pages (api.web.pages) and server-side sessions (api.web_sessions)."""
