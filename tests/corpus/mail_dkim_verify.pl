#!/usr/bin/perl
# Verifies the DKIM signatures of the message on standard input with Mail::DKIM (Debian's
# libmail-dkim-perl) and prints one line per DKIM-Signature, in message order:
#
#   RESULT DOMAIN SELECTOR ALGORITHM DETAIL
#
# RESULT is Mail::DKIM's (pass, fail, invalid, temperror, none); DETAIL is its
# result_detail, e.g. "invalid (unsupported algorithm ed25519-sha256)".
#
# Usage: perl mail_dkim_verify.pl KEYTABLE < message.eml
#
# KEYTABLE has one public key a line: "SELECTOR._domainkey.DOMAIN TXT-RECORD", e.g.
# "rsa1._domainkey.example.com v=DKIM1; k=rsa; p=MIIB...". It is the DNS: Mail::DKIM asks
# Mail::DKIM::DNS::query, which calls send(NAME, TYPE) and errorstring() on the object
# given to Mail::DKIM::DNS::resolver(); KeyTableResolver answers those from the table
# with real Net::DNS packets (NOERROR with a TXT answer, or NXDOMAIN).
use strict;
use warnings;

use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS;

package KeyTableResolver;

sub new {
    my ( $class, $path ) = @_;
    my %keys;
    open( my $fh, '<', $path ) or die "cannot read $path: $!\n";
    while ( my $line = <$fh> ) {
        $line =~ s/\r?\n\z//;
        next if $line =~ /^\s*(#|$)/;
        my ( $name, $value ) = split /\s+/, $line, 2;
        $keys{ lc $name } = $value;
    }
    close $fh;
    return bless { keys => \%keys, error => 'NOERROR' }, $class;
}

sub send {
    my ( $self, $name, $type ) = @_;
    $name =~ s/\.\z//;
    my $packet = Net::DNS::Packet->new( $name, $type, 'IN' );
    $packet->header->qr(1);
    $packet->header->aa(1);
    my $value = $self->{keys}{ lc $name };
    if ( defined $value && uc $type eq 'TXT' ) {
        # DNS character-strings hold 255 bytes at most: split as a zone file would.
        my @strings = unpack '(a255)*', $value;
        $packet->push( answer => Net::DNS::RR->new(
            name => $name, type => 'TXT', ttl => 300, txtdata => \@strings ) );
        $packet->header->rcode('NOERROR');
    }
    else {
        $packet->header->rcode('NXDOMAIN');
    }
    $self->{error} = $packet->header->rcode;
    return $packet;
}

sub query { my $self = shift; return $self->send(@_); }

sub errorstring { my $self = shift; return $self->{error}; }

package main;

@ARGV == 1 or die "usage: $0 KEYTABLE < message\n";
Mail::DKIM::DNS::resolver( KeyTableResolver->new( $ARGV[0] ) );

binmode STDIN;
my $message = do { local $/; <STDIN> };
my $dkim = Mail::DKIM::Verifier->new();
$dkim->PRINT($message);
$dkim->CLOSE();

my @signatures = $dkim->signatures;
print "none - - - no signature\n" unless @signatures;
for my $sig (@signatures) {
    printf "%s %s %s %s %s\n", $sig->result // 'none', $sig->domain // '-',
      $sig->selector // '-', $sig->algorithm // '-', $sig->result_detail // '-';
}
