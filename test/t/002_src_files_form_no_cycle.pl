
# 002_src_files_form_no_cycle.pl
#	The C files of src/ depend on each other without a cycle: reading the
#	data path in one pass means every file depends only on files below it.
#	A file depends on another when it uses a symbol (function or variable)
#	the other defines, as the linker sees it (nm on the objects that the
#	build left in src/).  Also checks that libcurl is used by the HTTP
#	transport alone.
#
#	courier 0.1 had cycles: logic.c called the tms stage, tms.c used the
#	transaction helpers of worker.c, worker.c called both; guc.c called
#	switches.c, which reads guc.c's variables.

use strict;
use warnings;

use FindBin;
use Test::More;

my $src = ($ENV{COURIER_REPO} // "$FindBin::RealBin/../..") . '/src';
my @objects = sort glob("$src/*.o");

plan skip_all => "no objects in $src (build first: make)" unless @objects;

my (%defines, %uses);
for my $o (@objects)
{
	my ($file) = $o =~ m{([^/]+)\.o$};
	for my $line (`nm $o`)
	{
		if ($line =~ /^\s*[0-9a-f]*\s+([TDBCRG])\s+(\S+)$/)
		{
			$defines{$2} = $file;
		}
		elsif ($line =~ /^\s+U\s+(\S+)$/)
		{
			push @{ $uses{$file} }, $1;
		}
	}
}

my %edges;
for my $file (sort keys %uses)
{
	for my $sym (@{ $uses{$file} })
	{
		my $to = $defines{$sym};
		$edges{$file}{$to} = 1 if defined $to && $to ne $file;
	}
}
note(join("\n", map { "$_ -> " . join(' ', sort keys %{ $edges{$_} }) }
	  sort keys %edges));

# A cycle, if any: depth-first search keeping the path.
my (%state, @cycle);
sub visit
{
	my ($node, @path) = @_;
	return if @cycle;
	$state{$node} = 1;
	for my $next (sort keys %{ $edges{$node} // {} })
	{
		if (($state{$next} // 0) == 1)
		{
			my @p = (@path, $node);
			my ($i) = grep { $p[$_] eq $next } 0 .. $#p;
			@cycle = (@p[ $i .. $#p ], $next);
			return;
		}
		visit($next, @path, $node) unless $state{$next};
		return if @cycle;
	}
	$state{$node} = 2;
}
visit($_) for sort keys %edges;
is(join(' -> ', @cycle), '', 'no cycle between the files of src/');

my @curl_users = sort grep {
	my $f = $_;
	grep { /^curl_/ } @{ $uses{$f} // [] }
} keys %uses;
is(join(' ', @curl_users), 'http', 'only the HTTP transport (http.c) calls libcurl');

done_testing();
