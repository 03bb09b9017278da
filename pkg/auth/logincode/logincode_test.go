package logincode

import (
	"regexp"
	"testing"
)

func TestFor(t *testing.T) {
	shape := regexp.MustCompile(`^[A-Z2-7]{4}-[A-Z2-7]{4}$`)
	seen := map[string]string{}
	for _, state := range []string{"1298498081", "a", "b", "S", "abcdefghijklmnopqrstuvwxyz0123456789-_"} {
		code := For(state)
		if !shape.MatchString(code) {
			t.Errorf("For(%q) = %q, want XXXX-XXXX of [A-Z2-7]", state, code)
		}
		if code != For(state) {
			t.Errorf("For(%q) is not stable", state)
		}
		if other, ok := seen[code]; ok {
			t.Errorf("For(%q) = For(%q) = %q", state, other, code)
		}
		seen[code] = state
	}
	// A known answer (printf 'sindri login code\0S' | sha256sum, first five
	// bytes in base32): an older client and a newer server must agree.
	if got := For("S"); got != "BLHE-K7SU" {
		t.Errorf("For(\"S\") = %q, want BLHE-K7SU", got)
	}
}
