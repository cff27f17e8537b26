"""The MCP sink: each event is one `tools/call` of the MCP server that wraps Legiti,
over MCP's Streamable HTTP transport, usually through a policy gateway."""
