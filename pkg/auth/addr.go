package auth

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr is the address a request came from: its RemoteAddr, or, when
// that is one of the trusted proxies, the nearest address in
// X-Forwarded-For that is not. X-Forwarded-For is ignored otherwise:
// anybody can send it. The zero Addr when RemoteAddr is no IP address.
func (o *oauthFlow) clientAddr(r *http.Request) netip.Addr {
	addr := parseAddr(r.RemoteAddr)
	if !o.trusted(addr) {
		return addr
	}
	// Right to left: each proxy appends the address it received from.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop := parseAddr(strings.TrimSpace(hops[i]))
		if !hop.IsValid() {
			break // a forged or garbled entry: stop at the last sure one
		}
		addr = hop
		if !o.trusted(hop) {
			break
		}
	}
	return addr
}

// requestHost is the host name the browser used to reach the server:
// the Host header, or X-Forwarded-Host when a trusted proxy sent it.
func (o *oauthFlow) requestHost(r *http.Request) string {
	host := r.Host
	if o.trusted(parseAddr(r.RemoteAddr)) {
		if v := r.Header.Values("X-Forwarded-Host"); len(v) > 0 {
			hosts := strings.Split(v[len(v)-1], ",")
			host = strings.TrimSpace(hosts[len(hosts)-1])
		}
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.Trim(host, "[]"))
}

func (o *oauthFlow) trusted(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range o.trustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseAddr reads "host:port" or a bare address; IPv4-mapped IPv6
// addresses become IPv4, zones are dropped.
func parseAddr(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone("")
}

// addrKey is what the per-address bound counts: an IPv4 address, or the
// /64 network of an IPv6 one, since one host commonly holds a whole /64.
func addrKey(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is4():
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// showAddr is an address as a page shows it.
func showAddr(a netip.Addr) string {
	if !a.IsValid() {
		return "an unknown address"
	}
	return a.String()
}
