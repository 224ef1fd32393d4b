"""End-to-end tests of mxpolicy in real homeservers.

Reusable, homeserver-agnostic helpers: `matrix` (a client-server API client), `browser`
(headless Chromium through Selenium), `consent` (the consent page over HTTP), `process` (a
server process with its log), `policy_set` (an `mxpolicy init` sample set, edited for a test);
`service` (`mxpolicy serve` as a process); `story` (what the homeserver stories of the tests
share); and one module per homeserver (`conduit`, `synapse`).
"""
