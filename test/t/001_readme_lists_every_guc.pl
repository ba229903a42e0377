# The README's configuration table is checked against the one place where
# the parameters are defined (src/guc.c): every parameter is documented, and
# the README documents no parameter that does not exist.
use strict;
use warnings;
use FindBin;
use Test::More;

my $repo = $ENV{COURIER_REPO} // "$FindBin::Bin/../..";

sub slurp
{
	my ($path) = @_;
	open my $fh, '<', $path or die "cannot read $path: $!";
	local $/;
	return <$fh>;
}

my $guc_c = slurp("$repo/src/guc.c");
my $readme = slurp("$repo/README.md");

my $switches_c = slurp("$repo/src/switches.c");

# the parameters of guc.c, and the rollout switches switches.c defines
my %defined = map { $_ => 1 } ($guc_c =~ /DefineCustom\w+Variable\(\s*"(courier\.[a-z0-9_.]+)"/g);
my ($rollouts) = $switches_c =~ /static RolloutSwitch rollouts\[\] = \{(.*?)\};/s;
$defined{"courier.rollout_$_"} = 1 for ($rollouts // '') =~ /\{"([a-z_0-9]+)",/g;
my ($config) = $readme =~ /^## Configuration\n(.*?)^## /ms;
ok(defined $config, 'README has a Configuration section');
$config //= '';
my %documented = map { $_ => 1 } ($config =~ /^\|\s*`(courier\.[a-z0-9_.]+)`\s*\|/mg);

cmp_ok(scalar(keys %defined), '>', 20, 'src/guc.c defines the parameters');
for my $name (sort keys %defined)
{
	ok($documented{$name}, "README documents $name");
}
for my $name (sort keys %documented)
{
	ok($defined{$name}, "README's $name exists in src/guc.c");
}
done_testing();
