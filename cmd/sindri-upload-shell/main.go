// Command sindri-upload-shell is what sshd runs for sindri's upload
// account: it takes uploads into the directories of pending images over
// SFTP (scp's default mode, sftp) or the legacy SCP protocol (scp -O),
// confined to the uploads directory, and refuses everything else. It is
// the account's ForceCommand and its login shell:
//
//	ForceCommand /usr/lib/sindri/sindri-upload-shell /var/lib/sindri/image_uploads
//
// See packaging/sshd_config.d/sindri-upload.conf and pkg/uploadshell.
package main

import (
	"os"

	"github.com/sindri-db/sindri/pkg/uploadshell"
)

func main() {
	os.Exit(uploadshell.Main(os.Args, os.Getenv("SSH_ORIGINAL_COMMAND"), os.Stdin, os.Stdout, os.Stderr))
}
