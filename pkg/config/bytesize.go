package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// ByteSize is a number of bytes. In TOML it is a string with an optional
// unit, such as "20GiB", "512MB", "1.5GiB" or "1048576", or an integer
// number of bytes. Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB,
// TB) units are understood, case-insensitively. "" is 0.
type ByteSize int64

// Int64 returns the size in bytes.
func (b ByteSize) Int64() int64 { return int64(b) }

// ParseByteSize parses a size such as "20GiB", "512MB" or "1048576".
// "" and "0" are 0.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, sizeError(s)
		}
		return ByteSize(n), nil
	}
	if s[0] < '0' || s[0] > '9' {
		// humanize also accepts a leading "." and other oddities.
		return 0, sizeError(s)
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		if strings.HasPrefix(err.Error(), "too large") {
			return 0, fmt.Errorf("%q is too large", s)
		}
		return 0, sizeError(s)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return ByteSize(n), nil
}

func sizeError(s string) error {
	return fmt.Errorf("%q is not a size (use a number of bytes or a unit such as 20GiB)", s)
}

// UnmarshalTOML accepts a TOML string (see ParseByteSize) or a
// non-negative integer number of bytes.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		n, err := ParseByteSize(v)
		if err != nil {
			return err
		}
		*b = n
		return nil
	case int64:
		if v < 0 {
			return fmt.Errorf("%d is not a size (it must not be negative)", v)
		}
		*b = ByteSize(v)
		return nil
	}
	return fmt.Errorf("%v is not a size (use a string such as \"20GiB\" or an integer number of bytes)", v)
}

// UnmarshalText implements encoding.TextUnmarshaler (see ParseByteSize).
func (b *ByteSize) UnmarshalText(text []byte) error {
	n, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = n
	return nil
}

// MarshalText implements encoding.TextMarshaler; see String.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// String formats b exactly, with the largest unit that divides it:
// "20GiB", "512MB", "1048577".
func (b ByteSize) String() string {
	n := int64(b)
	if n == 0 {
		return "0"
	}
	for _, u := range []struct {
		name string
		size int64
	}{
		// Largest first; each binary unit is a bit larger than its
		// decimal sibling.
		{"EiB", 1 << 60}, {"EB", 1e18}, {"PiB", 1 << 50}, {"PB", 1e15},
		{"TiB", 1 << 40}, {"TB", 1e12}, {"GiB", 1 << 30}, {"GB", 1e9},
		{"MiB", 1 << 20}, {"MB", 1e6}, {"KiB", 1 << 10}, {"kB", 1e3},
	} {
		if n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}
