package postgres

import "testing"

func TestSecretSettingLines(t *testing.T) {
	for line, secret := range map[string]bool{
		"primary_conninfo = 'host=prod password=x'":                        true,
		"primary_conninfo 'host=prod password=x'":                          true, // without =, as Postgres accepts
		"PRIMARY_CONNINFO='host=prod password=x'":                          true,
		"  #primary_conninfo = ''   # connection string to sending server": true,
		"# overridden by sindri: primary_conninfo = 'password=x'":          true,
		"restore_command = 'aws s3 cp --secret x s3://wal/%f %p'":          true,
		"archive_command='rsync %p backup@host:/wal/%f'":                   true,
		"archive_cleanup_command = 'x'":                                    true,
		"recovery_end_command = 'x'":                                       true,
		"ssl_passphrase_command = 'echo secret'":                           true,
		"primary_slot_name = 'replica1'":                                   false,
		"primary_conninfo_note = 1":                                        false,
		"work_mem = '64MB'":                                                false,
		"# archive_mode = off":                                             false,
		"include 'sindri.conf'":                                            false,
	} {
		if got := secretSetting.MatchString(line); got != secret {
			t.Errorf("%q: secret %v, want %v", line, got, secret)
		}
	}
}
