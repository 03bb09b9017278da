// Package logincode derives the short code that ties a login's
// confirmation page to the command that started the login. The server
// shows it on the page and the sindri client prints it in the terminal;
// both compute it from the login's state, the one thing they share before
// the token is handed out. It is a leaf package so that the client does
// not pull in the server's.
package logincode

import (
	"crypto/sha256"
	"encoding/base32"
)

// For is the code of the login with state: eight characters of
// [A-Z2-7] in two groups, such as "ABCD-EF23".
//
// The code is not a secret (whoever picked the state knows it): it lets a
// person tell their own login from one somebody else started, whose
// terminal they do not see.
func For(state string) string {
	sum := sha256.Sum256([]byte("sindri login code\x00" + state))
	s := base32.StdEncoding.EncodeToString(sum[:5]) // 40 bits: 8 characters, no padding
	return s[:4] + "-" + s[4:]
}
