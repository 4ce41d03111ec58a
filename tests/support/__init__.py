"""Helpers the tests share, each written once.

agentproc   real processes: the agent (`waystation run`), the loopback receiver, ports, SSE
inproc      the agent in the test's own process, and the command line run in-process
markers     the markers a test earns from what it starts (`process`, `model`, `netns`, `soak`)
fleetproc   a real nats-server and fleet helpers
floods      connection floods from child processes
fakehub     a fake model hub serving GGUF files
providers   a recording provider server (OpenAI, Anthropic and Vertex shapes)
npm_clis    fake npm-installed provider CLIs
"""
