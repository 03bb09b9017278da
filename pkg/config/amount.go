package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// SizeOrPercent is a number of bytes, or a percentage of the size of the
// filesystem sindrid stores into. In TOML it is a string such as "5%",
// "0.5%", "10GiB" or "0", or an integer number of bytes. At most one of
// Bytes and Percent is non-zero; both zero means none (no limit).
type SizeOrPercent struct {
	Bytes   ByteSize
	Percent float64
}

// IsZero reports whether the amount is 0 (no limit).
func (a SizeOrPercent) IsZero() bool { return a.Bytes == 0 && a.Percent == 0 }

// ParseSizeOrPercent parses "5%", "0.5%", "10GiB", "1048576"; "" and "0"
// are zero.
func ParseSizeOrPercent(s string) (SizeOrPercent, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		p = strings.TrimSpace(p)
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || p == "" || p[0] < '0' || p[0] > '9' || math.IsInf(f, 0) || math.IsNaN(f) {
			return SizeOrPercent{}, fmt.Errorf("%q is not a percentage (use a number such as \"5%%\" or \"0.5%%\")", s)
		}
		if f > 100 {
			return SizeOrPercent{}, fmt.Errorf("%q is more than 100%%", s)
		}
		return SizeOrPercent{Percent: f}, nil
	}
	n, err := ParseByteSize(s)
	if err != nil {
		return SizeOrPercent{}, fmt.Errorf("%q is neither a size nor a percentage (use a number of bytes, a unit such as 10GiB, or a percentage such as 5%%)", s)
	}
	return SizeOrPercent{Bytes: n}, nil
}

// UnmarshalTOML accepts a TOML string (see ParseSizeOrPercent) or a
// non-negative integer number of bytes.
func (a *SizeOrPercent) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		n, err := ParseSizeOrPercent(v)
		if err != nil {
			return err
		}
		*a = n
		return nil
	case int64:
		if v < 0 {
			return fmt.Errorf("%d is not a size (it must not be negative)", v)
		}
		*a = SizeOrPercent{Bytes: ByteSize(v)}
		return nil
	}
	return fmt.Errorf("%v is neither a size nor a percentage (use a string such as \"5%%\" or \"10GiB\", or an integer number of bytes)", v)
}

// UnmarshalText implements encoding.TextUnmarshaler (see
// ParseSizeOrPercent).
func (a *SizeOrPercent) UnmarshalText(text []byte) error {
	n, err := ParseSizeOrPercent(string(text))
	if err != nil {
		return err
	}
	*a = n
	return nil
}

// MarshalText implements encoding.TextMarshaler; see String.
func (a SizeOrPercent) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// String formats the amount as the configuration writes it: "5%",
// "10GiB", "0".
func (a SizeOrPercent) String() string {
	if a.Percent != 0 {
		return strconv.FormatFloat(a.Percent, 'f', -1, 64) + "%"
	}
	return a.Bytes.String()
}

// Of is the amount in bytes on a filesystem of total bytes.
func (a SizeOrPercent) Of(total int64) int64 {
	if a.Percent != 0 {
		return int64(float64(total) * a.Percent / 100)
	}
	return a.Bytes.Int64()
}
