"""End-to-end test harness: SeaweedFS over TLS under vpce names, a test DNS server, and the real proxy."""
