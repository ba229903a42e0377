
# 047_tms_rendering_is_one_pass.pl
#	A notice's text is the template with {order_id}, {product}, {reason}
#	and {new_ship_date} replaced in one pass: a value is never expanded
#	again.  A product named "{reason}{reason}{reason}{reason}{reason}" is
#	sent with those braces as they are, not with the reason five more
#	times.
#
#	The text itself is not visible outside the request, so the test uses
#	its length: with a reason of 200 Hangul syllables (400 bytes in
#	EUC-KR), one pass makes a text of about 470 bytes, an LMS that is
#	delivered; 0.1's nested replace() expanded the reason inside the
#	product name too, six copies, about 2,470 bytes, past the LMS limit of
#	2,000, and failed the notice as too long without sending it.

use strict;
use warnings;
use utf8;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_mock();
my $node = tms_node('tms_render', $mock);

is(register_tms_orders($node, 1, 1, product => '{reason}' x 5),
	1, 'an order whose product name is "{reason}" five times is registered');
delay_tms($node, 1, 1, 7, '가' x 200);

ok( poll_until(
		$node,
		"SELECT status || '|' || channel || '|' || attempts FROM courier.notices"
		  . " WHERE order_id = 1",
		'delivered|lms|1', 30),
	'the notice is delivered as one LMS on its first attempt: the reason was rendered once');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing failed as too long');
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{delivered}", '1|1',
	'the provider received and delivered the one message');

$node->stop;
done_testing();
