"""A multilingual check set for the filter chain: short prose written for these tests in 14 languages and
6 scripts, plus layouts that exercise the rules (lists, repeated lines, boilerplate, shouting, mixed script).

Nothing is downloaded. Each text is used as-is and in variants (repeated paragraphs, all caps, a list
layout), so the language, quality and repetition rules all see both kept and dropped documents.
"""

from __future__ import annotations

PROSE = {
    "en": "The old harbour town wakes up slowly in winter. Fishing boats stay tied to the quay, and the bakery on "
          "the corner opens an hour later than in summer. Most people who live here have known each other since "
          "school, so news travels fast and nobody needs a newspaper to learn that the ferry was late again. "
          "Visitors come back every year because the walks along the cliffs are quiet and the light is soft.",
    "de": "Die kleine Stadt am Fluss ist im Herbst besonders schön. Die Blätter der alten Bäume färben sich rot "
          "und gelb, und auf dem Marktplatz verkaufen die Bauern Äpfel, Kürbisse und frisches Brot. Am Abend "
          "sitzen die Leute in den Gasthäusern, trinken Wein aus der Gegend und reden über das Wetter, die Ernte "
          "und die Politik. Wer hier lebt, kennt fast jeden Nachbarn beim Namen und grüßt ihn auf der Straße.",
    "fr": "Le petit village se trouve au pied de la montagne, loin des grandes routes. Chaque matin, les habitants "
          "se retrouvent au café de la place pour lire le journal et parler des nouvelles de la semaine. En été, "
          "les touristes arrivent pour marcher dans les forêts et se baigner dans le lac, mais en hiver le calme "
          "revient et seules les cloches de l'église rompent le silence des longues soirées.",
    "es": "La ciudad se despierta temprano cuando los vendedores del mercado abren sus puestos de fruta y verdura. "
          "Los niños caminan hacia la escuela mientras sus padres toman un café rápido en la barra del bar de la "
          "esquina. Por la tarde, el calor obliga a todos a descansar, y solo cuando baja el sol las calles se "
          "llenan otra vez de gente que pasea, charla con los vecinos y compra pan para la cena.",
    "it": "Il paese sorge su una collina circondata da vigneti e uliveti che si estendono fino al mare. Ogni "
          "domenica la piazza principale si riempie di famiglie che escono dalla messa e si fermano a prendere un "
          "gelato. Gli anziani giocano a carte sotto i portici, mentre i ragazzi discutono della partita di calcio "
          "e dei programmi per le vacanze estive, che qui durano sempre troppo poco.",
    "pt": "A aldeia fica junto ao rio, rodeada de campos de milho e pequenas hortas cuidadas com paciência. Todas "
          "as manhãs, os pescadores voltam com o barco cheio e vendem o peixe no mercado antes do almoço. As "
          "crianças brincam na praça até ao anoitecer, e os avós contam histórias antigas sobre as cheias, as "
          "festas de verão e os tempos em que a estrada ainda não chegava até aqui.",
    "nl": "Het dorp ligt aan een smalle rivier tussen de weilanden, waar koeien de hele zomer buiten staan. Elke "
          "zaterdag is er markt op het plein, en de mensen kopen er kaas, vis en verse bloemen. In de winter, "
          "wanneer het water in de sloten bevriest, halen de kinderen hun schaatsen van zolder en rijden ze urenlang "
          "rondjes terwijl hun ouders warme chocolademelk drinken aan de kant.",
    "sv": "Den lilla staden ligger vid en sjö omgiven av tät skog och gamla röda stugor. På sommaren är kvällarna "
          "ljusa och långa, och många sitter ute på bryggorna och fiskar eller badar till sent på natten. När "
          "vintern kommer blir det mörkt redan på eftermiddagen, men då tänder alla ljus i fönstren och träffas "
          "hemma hos varandra för att dricka kaffe och äta nybakade bullar.",
    "pl": "Miasteczko leży nad rzeką, otoczone polami i niewielkimi lasami, w których jesienią zbiera się grzyby. "
          "W każdą sobotę na rynku odbywa się targ, gdzie rolnicy sprzedają ziemniaki, jabłka i świeże jajka. "
          "Wieczorami mieszkańcy spacerują po parku, rozmawiają o pracy i o pogodzie, a dzieci grają w piłkę na "
          "boisku za szkołą, dopóki rodzice nie zawołają ich na kolację.",
    "ru": "Небольшой город стоит на берегу широкой реки, и летом по ней ходят белые пароходы. По утрам жители "
          "спешат на работу, а старушки сидят на лавочках у подъездов и обсуждают последние новости. Зимой улицы "
          "засыпает снегом, дети катаются с горки на санках, а вечером все собираются дома за горячим чаем и "
          "рассказывают друг другу, как прошёл день.",
    "tr": "Küçük kasaba denizin kenarında, zeytin ağaçlarıyla kaplı tepelerin eteğinde kurulmuştur. Sabahları "
          "balıkçılar limana döner ve taze balıkları pazarda satar. Öğleden sonra yaşlılar kahvehanede oturup çay "
          "içer, tavla oynar ve eski günlerden söz eder. Yaz aylarında şehirden gelen aileler sahilde yüzer, "
          "akşamları ise herkes sahil yolunda yürüyüşe çıkar ve dondurma yer.",
    "zh": "这个小镇坐落在一条清澈的河边，四周是连绵的青山和整齐的稻田。每天清晨，镇上的人们都会去早市买新鲜的蔬菜和"
          "豆腐，街边的小店里飘出包子和豆浆的香味。到了傍晚，老人们在河边的大树下下棋聊天，孩子们在广场上追逐玩耍，"
          "一直到天黑才被父母叫回家吃晚饭。节日的时候，镇上会挂满红灯笼，家家户户团聚在一起。",
    "ja": "その小さな町は海と山に囲まれていて、春になると桜がとてもきれいに咲きます。朝早く、漁師たちは港から船を出し、"
          "昼ごろには新鮮な魚を市場に運びます。子どもたちは学校が終わると川で遊び、夕方になると家に帰って家族と一緒に"
          "晩ご飯を食べます。夏祭りの夜には、町じゅうの人が集まって花火を見ながら楽しい時間を過ごします。",
    "ar": "تقع القرية الصغيرة على ضفاف نهر هادئ تحيط به أشجار النخيل والحقول الخضراء. في الصباح الباكر يخرج "
          "الفلاحون إلى أراضيهم، بينما تفتح المحلات في السوق أبوابها لبيع الخبز والخضار والفواكه الطازجة. وفي "
          "المساء يجلس الرجال في المقهى يشربون الشاي ويتحدثون عن أخبار اليوم، ويلعب الأطفال في الساحة حتى "
          "يحين موعد العشاء مع عائلاتهم.",
}


def check_set() -> list[tuple[str, str]]:
    """``(name, text)`` pairs: every language as prose and in layouts that the rules judge differently."""
    out: list[tuple[str, str]] = []
    for lang, text in PROSE.items():
        sentences = [s.strip() for s in text.replace("。", "。\n").replace(". ", ".\n").split("\n") if s.strip()]
        out.append((f"{lang}-prose", "\n\n".join([text, " ".join(sentences[1:]), sentences[0]])))
        out.append((f"{lang}-long", "\n\n".join([text] + sentences * 3)))  # repeated lines and n-grams
        out.append((f"{lang}-caps", text.upper()))
        out.append((f"{lang}-list", "\n".join(f"- {s}" for s in sentences)))
        out.append((f"{lang}-short", sentences[0]))
        out.append((f"{lang}-mixed", f"{text}\n\n{PROSE['en']}\n\nCookie policy | Terms of use | Privacy policy"))
    out.append(("empty-ish", "   \n\n\t  "))
    out.append(("symbols", "#### ... #### ... " * 40))
    out.append(("tiny", "ok"))
    return out
