// Package secrets seals the secrets sindri keeps in its metadata database
// (instances' passwords and private keys, a pending pull's source_url)
// with a key that lives outside it, in a key file.
//
// A sealed value is text: "sindri:v1:", the 16 hex digits of the key's
// id, ":", then the base64 of AES-256-GCM's random nonce, ciphertext and
// tag. The caller binds each value to its place (table, column, row id)
// through the associated data, so a value copied to another row or column
// does not open.
//
// The key file holds one key per line, "key ID BASE64"; the first seals,
// the others only open. A rotation writes a new first key, seals every
// value again, then drops the keys no value uses: a crash at any moment
// leaves a file that opens every value.
package secrets

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sindri-db/sindri/pkg/safefile"
)

// Prefix starts every sealed value.
const Prefix = "sindri:v1:"

// Classified errors, for errors.Is.
var (
	// ErrNotSealed: the value is not a sealed value (it is in clear).
	ErrNotSealed = errors.New("not sealed")
	// ErrUnknownKey: the value was sealed with a key the key file does
	// not hold.
	ErrUnknownKey = errors.New("sealed with a key the key file does not hold")
	// ErrTampered: the value does not open with its key: it was altered,
	// or moved from another row or column.
	ErrTampered = errors.New("does not open: altered, or moved from another row or column")
	// ErrKeyFile: the key file is unusable (its mode, owner or content).
	ErrKeyFile = errors.New("unusable secrets key file")
)

const (
	keySize   = 32 // AES-256
	idBytes   = 8
	fileMode  = 0o600
	header    = "# sindri's secrets key file. Without it the passwords and private keys in the\n# metadata database cannot be read: back it up apart from the database.\n# The first key seals; any other only opens, until a key rotation finishes.\n"
	lineMagic = "key"
)

type key struct {
	id   string
	raw  []byte
	aead cipher.AEAD
}

// Keyring is the keys of one key file.
type Keyring struct {
	path string
	keys []key // keys[0] seals
}

// Path is the key file's path.
func (k *Keyring) Path() string { return k.path }

// Current is the id of the key that seals.
func (k *Keyring) Current() string { return k.keys[0].id }

// IDs are the ids of every key, the current one first.
func (k *Keyring) IDs() []string {
	ids := make([]string, len(k.keys))
	for i, kk := range k.keys {
		ids[i] = kk.id
	}
	return ids
}

// Load reads the key file at path. It refuses a file that is not a
// regular file owned by this process's user, or that its group or others
// may read or write. A missing file is an error for which
// errors.Is(err, fs.ErrNotExist) holds.
func Load(path string) (*Keyring, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w %s: it is a symbolic link; put the key file itself there", ErrKeyFile, path)
		}
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w %s: not a regular file", ErrKeyFile, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%w %s: it belongs to uid %d, not to sindrid's uid %d: chown it", ErrKeyFile, path, sys.Uid, os.Geteuid())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w %s: its mode %04o lets others read or change it: chmod 600 it, and rotate the key (sindrid secrets rotate-key) if anyone may have read it", ErrKeyFile, path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	keys, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %s; restore it from its backup", ErrKeyFile, path, err)
	}
	return &Keyring{path: path, keys: keys}, nil
}

// parse reads the lines of a key file.
func parse(data []byte) ([]key, error) {
	var keys []key
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 || fields[0] != lineMagic {
			return nil, fmt.Errorf("line %d is not \"key ID BASE64\"", n)
		}
		id, enc := fields[1], fields[2]
		if b, err := hex.DecodeString(id); err != nil || len(b) != idBytes {
			return nil, fmt.Errorf("line %d: the key id is not %d hex digits", n, 2*idBytes)
		}
		raw, err := base64.StdEncoding.DecodeString(enc)
		if err != nil || len(raw) != keySize {
			return nil, fmt.Errorf("line %d: the key is not the base64 of %d bytes", n, keySize)
		}
		if slices.ContainsFunc(keys, func(k key) bool { return k.id == id }) {
			return nil, fmt.Errorf("line %d: key id %s appears twice", n, id)
		}
		k, err := newKey(id, raw)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("it holds no key")
	}
	return keys, nil
}

func newKey(id string, raw []byte) (key, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return key{}, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return key{}, err
	}
	return key{id: id, raw: raw, aead: aead}, nil
}

func generateKey() (key, error) {
	raw := make([]byte, keySize)
	id := make([]byte, idBytes)
	if _, err := rand.Read(raw); err != nil {
		return key{}, err
	}
	if _, err := rand.Read(id); err != nil {
		return key{}, err
	}
	return newKey(hex.EncodeToString(id), raw)
}

// Create makes a key file with one new key at path, 0600, owned by this
// process's user; it fails if the file exists. Missing parent directories
// are made 0700.
func Create(path string) (*Keyring, error) {
	k, err := generateKey()
	if err != nil {
		return nil, err
	}
	kr := &Keyring{path: path, keys: []key{k}}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	// Written beside it, then linked into place: link fails if the file
	// exists, so a key file is never replaced by a new key.
	tmp, err := kr.writeTemp()
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	if err := safefile.SyncDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return kr, nil
}

// Rotate writes a new key first into the key file, keeping the others so
// that values sealed with them still open, and returns its id. Seal then
// uses the new key. Call Retain once every value is sealed again.
func (k *Keyring) Rotate() (string, error) {
	nk, err := generateKey()
	if err != nil {
		return "", err
	}
	for slices.ContainsFunc(k.keys, func(o key) bool { return o.id == nk.id }) {
		if nk, err = generateKey(); err != nil {
			return "", err
		}
	}
	next := &Keyring{path: k.path, keys: append([]key{nk}, k.keys...)}
	if err := next.save(); err != nil {
		return "", err
	}
	k.keys = next.keys
	return nk.id, nil
}

// Retain drops from the key file (and the keyring) every key but the
// current one and those in keep: the keys values are still sealed with.
func (k *Keyring) Retain(keep []string) error {
	kept := []key{k.keys[0]}
	for _, o := range k.keys[1:] {
		if slices.Contains(keep, o.id) {
			kept = append(kept, o)
		}
	}
	if len(kept) == len(k.keys) {
		return nil
	}
	next := &Keyring{path: k.path, keys: kept}
	if err := next.save(); err != nil {
		return err
	}
	k.keys = kept
	return nil
}

// save replaces the key file atomically: a crash leaves the old file or
// the new one, never a part.
func (k *Keyring) save() error {
	tmp, err := k.writeTemp()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, k.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("secrets key file %s: %w", k.path, err)
	}
	return safefile.SyncDir(filepath.Dir(k.path))
}

// writeTemp writes the keyring to a new file beside the key file, synced,
// and returns its path.
func (k *Keyring) writeTemp() (string, error) {
	var b strings.Builder
	b.WriteString(header)
	for _, kk := range k.keys {
		fmt.Fprintf(&b, "%s %s %s\n", lineMagic, kk.id, base64.StdEncoding.EncodeToString(kk.raw))
	}
	f, err := os.CreateTemp(filepath.Dir(k.path), "."+filepath.Base(k.path)+".new-*")
	if err != nil {
		return "", fmt.Errorf("secrets key file %s: %w", k.path, err)
	}
	tmp := f.Name()
	err = f.Chmod(fileMode) // CreateTemp makes 0600 already; say so
	if err == nil {
		_, err = f.WriteString(b.String())
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("secrets key file %s: %w", k.path, err)
	}
	return tmp, nil
}

// associated is the data GCM authenticates besides the ciphertext: the
// format, the key's id and the caller's binding.
func associated(id, binding string) []byte {
	return []byte(Prefix + id + "\x00" + binding)
}

// Seal encrypts plaintext with the current key, bound to binding (such as
// "instances.password#12"): Open must be given the same binding.
func (k *Keyring) Seal(plaintext, binding string) string {
	cur := k.keys[0]
	ct := cur.aead.Seal(nil, nil, []byte(plaintext), associated(cur.id, binding))
	return Prefix + cur.id + ":" + base64.RawStdEncoding.EncodeToString(ct)
}

// Open decrypts a sealed value bound to binding. ErrNotSealed if it is
// not a sealed value, ErrUnknownKey if its key is not in the keyring,
// ErrTampered if it does not open.
func (k *Keyring) Open(sealed, binding string) (string, error) {
	id, body, ok := split(sealed)
	if !ok {
		return "", ErrNotSealed
	}
	i := slices.IndexFunc(k.keys, func(kk key) bool { return kk.id == id })
	if i < 0 {
		return "", fmt.Errorf("%w (key id %s; %s holds %s)", ErrUnknownKey, id, k.path, strings.Join(k.IDs(), ", "))
	}
	ct, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil {
		return "", ErrTampered
	}
	pt, err := k.keys[i].aead.Open(nil, nil, ct, associated(id, binding))
	if err != nil {
		return "", ErrTampered
	}
	return string(pt), nil
}

// KeyID is the id of the key a sealed value was sealed with; ok is false
// when the value is not sealed.
func KeyID(sealed string) (id string, ok bool) {
	id, _, ok = split(sealed)
	return id, ok
}

// IsSealed tells a sealed value from one in clear.
func IsSealed(s string) bool {
	_, ok := KeyID(s)
	return ok
}

func split(sealed string) (id, body string, ok bool) {
	rest, ok := strings.CutPrefix(sealed, Prefix)
	if !ok {
		return "", "", false
	}
	id, body, ok = strings.Cut(rest, ":")
	if !ok || len(id) != 2*idBytes {
		return "", "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", "", false
	}
	return id, body, true
}
