// Package iocount counts the bytes that pass through a stream.
package iocount

import "io"

// Writer passes what is written to W (io.Discard when nil) and counts it
// in N. Read through io.TeeReader(r, &Writer{}) it counts what is read.
type Writer struct {
	W io.Writer
	N int64
}

func (c *Writer) Write(p []byte) (int, error) {
	w := c.W
	if w == nil {
		w = io.Discard
	}
	n, err := w.Write(p)
	c.N += int64(n)
	return n, err
}
